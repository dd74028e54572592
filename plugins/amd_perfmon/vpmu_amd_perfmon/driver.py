"""The AMD core perf driver (Linux arch/x86/events/amd/core.c), for host and guest perf.

It only uses what a `RegisterPort` offers (rdmsr, wrmsr, rdpmc, cpuid), so the same code
programs a physical PMU and a vCPU. Like Linux it learns the PMU from CPUID once per CPU
(`amd_pmu_init`), uses the extension MSRs when PerfCtrExtCore is present
(`amd_pmu_addr_offset`), and on PerfMonV2 keeps PerfCntrGlobalCtl enabling the counters it
uses and acknowledges overflows through PerfCntrGlobalStatusClr (`amd_pmu_v2_handle_irq`).
"""

from __future__ import annotations

import errno

from vpmu_core.api import HwEvent, PerfError, PerfEventAttr, RegisterPort, get_logger

from vpmu_amd_perfmon import eventsel as es
from vpmu_amd_perfmon.cpuid import PmuEnumeration, enumerate_pmu
from vpmu_amd_perfmon.pmu import (
    F15H_PERF_CTL0,
    F15H_PERF_CTR0,
    GLOBAL_CTL,
    GLOBAL_STATUS_CLR,
    K7_EVNTSEL0,
    K7_PERFCTR0,
    WIDTH,
)

log = get_logger("vpmu.amd_perfmon")

_MASK = (1 << WIDTH) - 1

#: Generic hardware events, Linux `amd_zen1_perfmon_event_map` (family 17h+). No
#: ref-cycles / bus-cycles entry: opening them fails with ENOENT as on Linux.
ZEN_GENERIC = {
    "cycles": 0x0076,
    "instructions": 0x00C0,
    "cache-references": 0xFF60,
    "cache-misses": 0x0964,
    "branches": 0x00C2,
    "branch-misses": 0x00C3,
    "stalled-cycles-frontend": 0x0287,
    "stalled-cycles-backend": 0x0187,
}
#: Linux `amd_perfmon_event_map` (K7 to family 16h).
K7_GENERIC = {
    "cycles": 0x0076,
    "instructions": 0x00C0,
    "cache-references": 0x077D,
    "cache-misses": 0x077E,
    "branches": 0x00C2,
    "branch-misses": 0x00C3,
    "stalled-cycles-frontend": 0x00D0,
    "stalled-cycles-backend": 0x00D1,
}


class AmdPerfDriver:
    """`PerfDriver` for the AMD core PMU. Stateless apart from a per-port CPUID cache."""

    def __init__(self) -> None:
        self._ports: dict[int, PmuEnumeration] = {}

    def _pmu(self, port: RegisterPort) -> PmuEnumeration:
        """CPUID is read once per port, like `amd_pmu_init` once per boot."""
        key = id(port)
        info = self._ports.get(key)
        if info is None:
            info = enumerate_pmu(port.cpuid)
            self._ports[key] = info
            log.debug("amd.driver_init", counters=info.n_counters, ext_core=info.ext_core, perfmon_v2=info.perfmon_v2)
        return info

    def _ctl(self, info: PmuEnumeration, idx: int) -> int:
        return F15H_PERF_CTL0 + 2 * idx if info.ext_core else K7_EVNTSEL0 + idx

    def _ctr(self, info: PmuEnumeration, idx: int) -> int:
        return F15H_PERF_CTR0 + 2 * idx if info.ext_core else K7_PERFCTR0 + idx

    # ---- PerfDriver ---------------------------------------------------------------------------
    def counter_mask(self, port: RegisterPort) -> int:
        return (1 << self._pmu(port).n_counters) - 1

    def width(self, port: RegisterPort, idx: int) -> int:
        return WIDTH

    def hw_event(self, attr: PerfEventAttr, port: RegisterPort) -> HwEvent:
        """x86_pmu_hw_config + amd_core_hw_config: encode, filter, constrain."""
        info = self._pmu(port)
        if attr.wants_branch_stack:
            # No LBR/BRS is modelled for AMD here (Linux: -EOPNOTSUPP without BRS/LbrExtV2).
            raise PerfError(errno.EOPNOTSUPP, "branch stacks are not supported by the AMD core PMU model")
        if attr.precise_ip:
            raise PerfError(errno.EOPNOTSUPP, "precise_ip needs IBS, which is not modelled")
        sel = self._encode(attr, info)
        if not attr.exclude_user:
            sel |= es.USR
        if not attr.exclude_kernel:
            sel |= es.OS
        if attr.exclude_host and attr.exclude_guest:
            # HO == GO == 1 counts in both modes, so count nothing by clearing USR/OS.
            sel &= ~(es.USR | es.OS)
        elif attr.exclude_host:
            sel |= es.GUEST_ONLY
        elif attr.exclude_guest:
            sel |= es.HOST_ONLY
        mask = (1 << info.n_counters) - 1
        if info.zen and es.event_select(sel) == es.LARGE_INCREMENT_EVENT:
            # Family 17h+ pair constraint: even counter only. The Merge event its odd
            # neighbour needs is not programmed (the event counts nothing in this model).
            mask &= 0x5555_5555
        kind = es.decode_kind(sel, info.zen)
        if es.is_exotic(sel):
            kind = None
        return HwEvent(
            config=sel,
            mask=mask,
            exclude_host=attr.exclude_host,
            exclude_guest=attr.exclude_guest,
            usr=bool(sel & es.USR),
            os=bool(sel & es.OS),
            interrupt=True,
            kind=None if kind is None else int(kind),
        )

    def _encode(self, attr: PerfEventAttr, info: PmuEnumeration) -> int:
        if attr.type == "raw":
            cfg = attr.config
            if isinstance(cfg, str):
                try:
                    cfg = int(cfg, 0)
                except ValueError:
                    raise PerfError(errno.EINVAL, f"raw config {cfg!r} is not a number") from None
            return cfg & es.RAW_EVENT_MASK  # amd_core_hw_config: AMD64_RAW_EVENT_MASK
        # the core decoded PERF_COUNT_HW_* numbers to names (decode_hw_config); a name the
        # map lacks is amd_pmu_event_map() returning 0: -ENOENT in x86_setup_perfctr
        table = ZEN_GENERIC if info.zen else K7_GENERIC
        code = table.get(str(attr.config))
        if code is None:
            raise PerfError(errno.ENOENT, f"{attr.config}: no AMD encoding (amd_perfmon_event_map)")
        return es.encode(code & 0xFF, code >> 8)

    def start(self, port: RegisterPort, hw: HwEvent, idx: int, value: int) -> None:
        """Counter first, then the selector with EN (and INT); on PerfMonV2 make sure the
        GlobalCtl bit is set (Linux keeps all counters enabled there)."""
        info = self._pmu(port)
        port.wrmsr(self._ctr(info, idx), value & _MASK)
        if info.perfmon_v2:
            ctl = port.rdmsr(GLOBAL_CTL)
            if not ctl >> idx & 1:
                port.wrmsr(GLOBAL_CTL, ctl | 1 << idx)
        port.wrmsr(self._ctl(info, idx), hw.config | es.EN | (es.INT if hw.interrupt else 0))

    def stop(self, port: RegisterPort, hw: HwEvent, idx: int) -> int:
        """x86_pmu_disable_event then x86_perf_event_update: clear EN, read the count."""
        info = self._pmu(port)
        port.wrmsr(self._ctl(info, idx), hw.config | (es.INT if hw.interrupt else 0))
        return port.rdpmc(idx) & _MASK

    def read(self, port: RegisterPort, idx: int) -> int:
        return port.rdpmc(idx) & _MASK  # Linux reads counters with RDPMC

    def write(self, port: RegisterPort, idx: int, value: int) -> None:
        port.wrmsr(self._ctr(self._pmu(port), idx), value & _MASK)

    def ack(self, port: RegisterPort, idx: int) -> None:
        """PerfMonV2: write-1-to-clear the status bit; legacy has no status to clear."""
        if self._pmu(port).perfmon_v2:
            port.wrmsr(GLOBAL_STATUS_CLR, 1 << idx)
