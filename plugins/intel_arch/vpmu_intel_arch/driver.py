"""The x86 perf driver for Intel architectural PMUs (arch/x86/events/intel/core.c).

One driver object serves host perf on physical PMUs and guest perf on vCPUs: it learns
each port's PMU from CPUID.0AH (and PERF_CAPABILITIES) once and caches it, because on a
vCPU every CPUID/RDMSR is a VM-exit. It programs counters only through `RegisterPort`
(rdmsr/wrmsr/rdpmc/cpuid), plus `set_entry_loads` where the port is a physical CPU.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from vpmu_core.api import (
    FIXED_BASE,
    EventKind,
    GlobalCtrlSplit,
    HwEvent,
    PerfError,
    PerfEventAttr,
    RegisterPort,
    get_logger,
)
from vpmu_intel_arch.cpuid import CPUID1_ECX_PDCM, CPUID7_EDX_ARCH_LBR
from vpmu_intel_arch.events import (
    ARCH_EVENT_MASK,
    ARCH_EVENTS,
    EVTSEL_ANY,
    EVTSEL_CMASK,
    EVTSEL_EDGE,
    EVTSEL_EN,
    EVTSEL_INT,
    EVTSEL_INV,
    EVTSEL_OS,
    EVTSEL_USR,
    FIXED_EVENTS,
    GENERIC_EVENTS,
    RAW_EVENT_MASK,
    Constraint,
    constraint_mask,
)
from vpmu_intel_arch.layout import PERF_CAP_FW_WRITE, PERF_CAP_LBR_FMT
from vpmu_intel_arch.pmu import (
    MSR_A_PMC0,
    MSR_FIXED_CTR0,
    MSR_FIXED_CTR_CTRL,
    MSR_GLOBAL_CTRL,
    MSR_GLOBAL_OVF_CTRL,
    MSR_PERF_CAPABILITIES,
    MSR_PERFEVTSEL0,
    MSR_PMC0,
    RDPMC_FIXED,
)

log = get_logger("vpmu.intel_arch.driver")

#: what a fixed counter counts, by its Linux pseudo encoding / architectural encoding
_FIXED_KIND: dict[int, EventKind] = dict(FIXED_EVENTS)


@dataclass
class _PortState:
    """What the driver knows and keeps per port (Linux `struct cpu_hw_events` essentials)."""

    port: RegisterPort
    version: int
    n_gp: int
    fixed_mask: int  # bits 32+i
    gp_width: int
    fixed_width: int
    full_width: bool
    lbr: bool
    fixed_ctrl: int = 0
    #: counters started by perf and their exclude_guest / exclude_host split: Linux
    #: `cpuc->intel_ctrl_host_mask` / `intel_ctrl_guest_mask`
    split: GlobalCtrlSplit = field(default_factory=GlobalCtrlSplit)
    #: perf_pmu_disable() nesting (Linux `cpuc->enabled == 0`): while > 0, start/stop only
    #: update `split`; the global control is written once by `pmu_enable`
    disabled: int = 0
    #: a start or stop changed `split` while disabled (the global write is owed)
    global_dirty: bool = False

    @property
    def counter_mask(self) -> int:
        return ((1 << self.n_gp) - 1) | self.fixed_mask


class IntelPerfDriver:
    """`vpmu_core.perf.driver.PerfDriver` for Intel arch PMUs v1-v5."""

    def __init__(
        self,
        constraints: tuple[Constraint, ...],
        features: dict[str, Any],
        counted: dict[int, EventKind] | None = None,
    ) -> None:
        self.constraints = constraints
        self.features = features
        #: umask<<8|event -> kind for the architectural events this CPU counts on a GP
        #: counter (the model's event table, `PmuLayout.counted`); default: all of them
        self.counted: dict[int, EventKind] = dict(ARCH_EVENTS) if counted is None else dict(counted)
        self._ports: dict[int, _PortState] = {}
        self._sel: dict[tuple[int, int], int] = {}

    # ---- per-port discovery --------------------------------------------------------------
    def _state(self, port: RegisterPort) -> _PortState:
        st = self._ports.get(id(port))
        if st is not None and st.port is port:
            return st
        st = self._probe(port)
        self._ports[id(port)] = st
        return st

    def _probe(self, port: RegisterPort) -> _PortState:
        """Linux `intel_pmu_init`: CPUID.0AH gives version, counts and widths; v5 adds the
        ECX fixed bitmask (FxCtr[i] := ECX[i] || EDX[4:0] > i); full-width writes and the
        LBR format come from PERF_CAPABILITIES when CPUID.1:ECX.PDCM is set."""
        eax, _ebx, ecx, edx = port.cpuid(0xA, 0)
        version = eax & 0xFF
        n_gp = (eax >> 8) & 0xFF if version else 0
        gp_width = (eax >> 16) & 0xFF
        fixed_mask = 0
        fixed_width = 0
        if version >= 2:
            fixed = (1 << (edx & 0x1F)) - 1
            if version >= 5:
                fixed |= ecx
            fixed_mask = (fixed & 0xFFFF) << FIXED_BASE
            fixed_width = (edx >> 5) & 0xFF
        caps = 0
        if version and port.cpuid(0x1, 0)[2] & CPUID1_ECX_PDCM:
            caps = port.rdmsr(MSR_PERF_CAPABILITIES)
        arch_lbr = bool(port.cpuid(0x7, 0)[3] & CPUID7_EDX_ARCH_LBR) and "arch_lbr" in self.features
        legacy_lbr = "lbr" in self.features and bool(caps & PERF_CAP_LBR_FMT)
        fixed_ctrl = port.rdmsr(MSR_FIXED_CTR_CTRL) if version >= 2 else 0
        st = _PortState(
            port=port,
            version=version,
            n_gp=n_gp,
            fixed_mask=fixed_mask,
            gp_width=gp_width,
            fixed_width=fixed_width,
            full_width=bool(caps & PERF_CAP_FW_WRITE),
            lbr=arch_lbr or legacy_lbr,
            fixed_ctrl=fixed_ctrl,
        )
        log.debug("intel.probe", version=version, gp=n_gp, fixed=fixed_mask >> FIXED_BASE, fw=st.full_width)
        return st

    # ---- PerfDriver ----------------------------------------------------------------------
    def counter_mask(self, port: RegisterPort) -> int:
        return self._state(port).counter_mask

    def hw_event(self, attr: PerfEventAttr, port: RegisterPort) -> HwEvent:
        """Linux `x86_pmu_hw_config` + `intel_pmu_hw_config` + the constraint lookup."""
        st = self._state(port)
        if st.version == 0:
            raise PerfError(errno.ENOENT, "no architectural PMU (CPUID.0AH version 0)")
        if attr.type == "hardware":
            if attr.config not in GENERIC_EVENTS:
                raise PerfError(errno.ENOENT, f"unknown generic event {attr.config!r}")
            config = GENERIC_EVENTS[str(attr.config)]
        else:
            if not isinstance(attr.config, int) or attr.config < 0 or attr.config >> 64:
                raise PerfError(errno.EINVAL, f"raw config must be a 64-bit int, got {attr.config!r}")
            if attr.config & EVTSEL_ANY:
                # intel_pmu_hw_config: AnyThread needs v3+ and no deprecation; the span
                # model cannot count the sibling thread anyway, so it is refused.
                raise PerfError(errno.EINVAL, "AnyThread events are not supported")
            config = attr.config & RAW_EVENT_MASK  # x86_pmu_hw_config keeps X86_RAW_EVENT_MASK
        mask = constraint_mask(self.constraints, config, (1 << st.n_gp) - 1) & st.counter_mask
        if not mask:
            # validate_event(): an empty constraint is -EINVAL (e.g. ref-cycles w/o fixed2)
            raise PerfError(errno.EINVAL, f"event {config:#x} has no counter on this PMU")
        resources: tuple[tuple[str, str], ...] = ()
        if attr.wants_branch_stack:
            if not st.lbr:
                raise PerfError(errno.EOPNOTSUPP, "branch stack needs LBR or Arch LBR")
            # Linux shares the LBR between events with the same LBR_SELECT filter.
            resources = (("lbr", ",".join(sorted(attr.branch_sample_type))),)
        exotic = config & (EVTSEL_EDGE | EVTSEL_INV | EVTSEL_CMASK)
        kind = None if exotic else self._kind(config & ARCH_EVENT_MASK, mask)
        return HwEvent(
            config=config,
            mask=mask,
            resources=resources,
            exclude_host=attr.exclude_host,
            exclude_guest=attr.exclude_guest,
            usr=not attr.exclude_user,
            os=not attr.exclude_kernel,
            interrupt=True,  # x86_pmu_hw_config always sets ARCH_PERFMON_EVENTSEL_INT
            kind=None if kind is None else int(kind),
        )

    def _kind(self, code: int, mask: int) -> EventKind | None:
        """What the event counts where it may be scheduled, as the PMU counts it: on a GP
        counter an architectural event the CPU enumerates (CPUID.0AH:EAX[31:24] bounds the
        table: SDM Vol. 3B 20.2.1.2), on a fixed counter its fixed event. A fixed pseudo
        encoding (event code 0) is no GP event: Skylake has no SLOTS fixed counter, so Linux
        schedules raw 0x0400 on a GP counter (intel_skl_event_constraints has no entry for
        it, x86_get_event_constraints falls back to unconstrained) where event select 00H
        counts no architectural event (SDM Table 20-1: Topdown Slots is A4H/01H, event 7,
        beyond Skylake's 7 enumerated events): kind None, not "topdown slots"."""
        kind = self.counted.get(code)
        if kind is None and mask >> FIXED_BASE:
            kind = _FIXED_KIND.get(code)
        return kind

    def width(self, port: RegisterPort, idx: int) -> int:
        st = self._state(port)
        return st.fixed_width if idx >= FIXED_BASE else st.gp_width

    def start(self, port: RegisterPort, hw: HwEvent, idx: int, value: int) -> None:
        """x86_pmu_start: set the period (counter value), enable the selector or the fixed
        nibble (intel_pmu_enable_fixed), then the GLOBAL_CTRL bit (v2+)."""
        st = self._state(port)
        self._write_counter(st, idx, value)
        if idx >= FIXED_BASE:
            i = idx - FIXED_BASE
            bits = (1 if hw.os else 0) | (2 if hw.usr else 0) | (8 if hw.interrupt else 0)
            st.fixed_ctrl = (st.fixed_ctrl & ~(0xF << (4 * i))) | bits << (4 * i)
            port.wrmsr(MSR_FIXED_CTR_CTRL, st.fixed_ctrl)
        else:
            sel = hw.config | EVTSEL_EN
            sel |= (EVTSEL_USR if hw.usr else 0) | (EVTSEL_OS if hw.os else 0) | (EVTSEL_INT if hw.interrupt else 0)
            self._sel[(id(port), idx)] = sel
            port.wrmsr(MSR_PERFEVTSEL0 + idx, sel)
        st.split.set(idx, True, exclude_guest=hw.exclude_guest, exclude_host=hw.exclude_host)
        if st.disabled:
            st.global_dirty = True
        else:
            self._apply_global(st)

    def stop(self, port: RegisterPort, hw: HwEvent, idx: int) -> int:
        """x86_pmu_stop: disable (clear EN / the fixed nibble), then read the count."""
        st = self._state(port)
        if idx >= FIXED_BASE:
            i = idx - FIXED_BASE
            st.fixed_ctrl &= ~(0xF << (4 * i))
            port.wrmsr(MSR_FIXED_CTR_CTRL, st.fixed_ctrl)
        else:
            sel = self._sel.pop((id(port), idx), hw.config)
            port.wrmsr(MSR_PERFEVTSEL0 + idx, sel & ~EVTSEL_EN)
        st.split.set(idx, False)
        if st.disabled:
            st.global_dirty = True
        else:
            self._apply_global(st)
        return self.read(port, idx)

    def read(self, port: RegisterPort, idx: int) -> int:
        """Linux reads counters with RDPMC (x86_perf_event_update / event_base_rdpmc)."""
        ecx = RDPMC_FIXED | (idx - FIXED_BASE) if idx >= FIXED_BASE else idx
        return port.rdpmc(ecx)

    def write(self, port: RegisterPort, idx: int, value: int) -> None:
        self._write_counter(self._state(port), idx, value)

    def ack(self, port: RegisterPort, idx: int) -> None:
        """intel_pmu_ack_status: write-1-to-clear GLOBAL_OVF_CTRL (v2+; v1 has no status)."""
        if self._state(port).version >= 2:
            port.wrmsr(MSR_GLOBAL_OVF_CTRL, 1 << idx)

    def pmu_disable(self, port: RegisterPort) -> None:
        """perf_pmu_disable() -> x86_pmu_disable(): the core brackets a reschedule of a
        physical PMU with it. Linux's intel_pmu_disable_all() zeroes GLOBAL_CTRL here and
        intel_pmu_enable_event() leaves it alone; the model writes no intermediate value (no
        work counts inside the bracket, the PMU decodes once at its end) and only defers
        the GLOBAL_CTRL / VM-entry-load write of each start and stop to `pmu_enable`."""
        self._state(port).disabled += 1

    def pmu_enable(self, port: RegisterPort) -> None:
        """perf_pmu_enable() -> x86_pmu_enable() -> intel_pmu_enable_all(): GLOBAL_CTRL (and
        the VM-entry load, `intel_guest_get_msrs`) written once, with the split every start
        and stop inside the bracket left; nothing if none happened."""
        st = self._state(port)
        st.disabled -= 1
        if not st.disabled and st.global_dirty:
            st.global_dirty = False
            self._apply_global(st)

    # ---- helpers -------------------------------------------------------------------------
    def _write_counter(self, st: _PortState, idx: int, value: int) -> None:
        """Full-width alias with PERF_CAPABILITIES[13] (Linux sets perfctr = MSR_IA32_PMC0),
        else the legacy MSR, which sign-extends bits 31:0: exact for the values perf writes
        there (-period with period < 2^31, Linux's max_period without full-width writes)."""
        port = st.port
        if idx >= FIXED_BASE:
            port.wrmsr(MSR_FIXED_CTR0 + idx - FIXED_BASE, value & ((1 << st.fixed_width) - 1))
        elif st.full_width:
            port.wrmsr(MSR_A_PMC0 + idx, value & ((1 << st.gp_width) - 1))
        else:
            port.wrmsr(MSR_PMC0 + idx, value & 0xFFFFFFFF)

    def _apply_global(self, st: _PortState) -> None:
        """Linux `__intel_pmu_enable_all` / `intel_guest_get_msrs`: the live GLOBAL_CTRL
        excludes guest-only counters; the VM-entry load excludes host-only ones."""
        if st.version < 2:
            return  # v1: EN alone enables (SDM 20.2.1)
        st.split.apply(st.port, MSR_GLOBAL_CTRL)
