"""A toy vendor and a reference mode: test fixtures for the core and for plugin authors.

Not a product and not installed as an entry point: register them directly, e.g.
``compose(cpu="toy/basic", mode="reference", plugins=[("toy", vpmu_core.testing.toy)])``
or pass a vendor plugin and this module together to test a vendor against the reference.

* ``toy/basic``: 4 GP counters (48 bit) + 1 fixed instructions counter, a global control.
  MSRs: EVTSEL i 0x100+i (event 7:0 = EventKind value, USR 16, OS 17, INT 20, EN 22,
  everything else reserved -> #GP; LEGACY_EVTSEL i 0x120+i is an alias of the same selector,
  as AMD's K7 EVNTSELx are), CTR i 0x200+i (full width), LEGACY_CTR i 0x220+i (the
  same counter; a write sign-extends bit 31, as Intel's IA32_PMCx), FIXED0 0x210,
  FIXED_CTRL 0x310 (OS 0, USR 1, PMI 3), GLOBAL_CTRL 0x300 (reset: all enabled),
  GLOBAL_STATUS 0x301 (read-only), STATUS_CLR 0x302, CAPS 0x320 (read-only: bit 0 full-width
  writes; bit 8 a host-only capability a guest never sees). Event 0x05 (branches) is
  constrained to counters 0-1.
* ``reference`` mode: every PMU access is intercepted and emulated on the vCPU's own PMU,
  which counts guest work directly: the ideal vPMU, against which real modes are measured.
"""

from __future__ import annotations

import errno
from typing import Any

from vpmu_core.errors import ConfigError, PerfError, gp
from vpmu_core.events import EMULATED_INSTRUCTION, EventKind
from vpmu_core.hv.config import GuestPmuConfig
from vpmu_core.hw.cpuid import CpuidTable
from vpmu_core.hw.enables import entry_split, fold_enables
from vpmu_core.hw.entry_split import GlobalCtrlSplit
from vpmu_core.hw.guest_clamp import clamp_guest
from vpmu_core.hw.model import PmuCapabilities
from vpmu_core.hw.msr import Register
from vpmu_core.hw.options import parse_int
from vpmu_core.hw.pmc import FIXED_BASE, Pmc
from vpmu_core.hw.pmu import PmuBase
from vpmu_core.markers import hookimpl
from vpmu_core.perf.attr import PerfEventAttr
from vpmu_core.perf.driver import HwEvent, RegisterPort
from vpmu_core.plugins.records import CpuModelSpec, ModeSpec

EVTSEL, CTR, FIXED0, FIXED_CTRL, GCTRL, GSTATUS, GSTATUS_CLR = 0x100, 0x200, 0x210, 0x310, 0x300, 0x301, 0x302
LEGACY_CTR, LEGACY_EVTSEL, CAPS = 0x220, 0x120, 0x320
CAP_FULL_WIDTH, CAP_HOST_ONLY = 1 << 0, 1 << 8
USR, OS, INT, EN = 1 << 16, 1 << 17, 1 << 20, 1 << 22
EVTSEL_VALID = 0xFF | USR | OS | INT | EN
TOY_CPUID_LEAF = 0x4000_0100  # eax = n gp, ebx = n fixed, ecx = width


class ToyPmu(PmuBase):
    vendor = "toy"
    atomic_global_ctrl_switch = True

    def __init__(self, gp_n: int = 4, fixed_n: int = 1, guest: bool = False) -> None:
        super().__init__(guest=guest)
        self.version = 2
        self.gp = [Pmc(i, 48) for i in range(gp_n)]
        self.fixed = [Pmc(FIXED_BASE + i, 48) for i in range(fixed_n)]
        self.evtsel = [0] * gp_n
        self.fixed_ctrl = 0
        valid = self._valid_global()
        # declarative registers (vpmu_core/hw/msr.py): reset values, masks, policies
        self.gctrl = self.add_register(
            GCTRL,
            Register("GLOBAL_CTRL", reset=(1 << gp_n) - 1, writable=valid, on_write=lambda o, n: self.refresh(o ^ n)),
        )
        self.gstatus = self.add_register(GSTATUS, Register("GLOBAL_STATUS", writable=valid, read_only=True))
        self.status_register = self.gstatus  # PmuBase's raise_overflow/global_status keep it
        self.add_register(
            GSTATUS_CLR, Register("GLOBAL_STATUS_CLR", writable=valid, reads_as=0, write_1_to_clear=self.gstatus)
        )
        # read-only for the guest; KVM_SET_MSRS may write what the PMU supports (as KVM does
        # for PERF_CAPABILITIES), so a migration state restores
        caps = self._caps()
        self.add_register(CAPS, Register("CAPS", reset=caps, writable=caps, read_only=True, host_writable=True))
        for i, p in enumerate(self.gp):
            for sel in (EVTSEL + i, LEGACY_EVTSEL + i):
                self._reg(sel, lambda i=i: self.evtsel[i], lambda v, i=i: self._w_evtsel(i, v))
            self.add_counter(CTR + i, p, "masked")
            self.add_counter(LEGACY_CTR + i, p, "legacy")
        for p in self.fixed:
            self.add_counter(FIXED0, p, "masked")
        if fixed_n:
            self._reg(FIXED_CTRL, lambda: self.fixed_ctrl, self._w_fixed_ctrl)
        self.refresh(0)

    def _caps(self) -> int:
        return CAP_FULL_WIDTH if self.guest else CAP_FULL_WIDTH | CAP_HOST_ONLY

    def _valid_global(self) -> int:
        return ((1 << len(self.gp)) - 1) | (((1 << len(self.fixed)) - 1) << FIXED_BASE)

    def _w_evtsel(self, i: int, v: int) -> None:
        if v & ~EVTSEL_VALID:
            raise gp(f"EVTSEL{i} reserved bits {v & ~EVTSEL_VALID:#x}")
        self.evtsel[i] = v
        self.refresh(1 << i)

    def _w_fixed_ctrl(self, v: int) -> None:
        if v & ~0xB:
            raise gp("FIXED_CTRL reserved bits")
        self.fixed_ctrl = v
        self.refresh(1 << FIXED_BASE)

    def _decode(self) -> None:
        gctrl, guest_gctrl = entry_split(self, GCTRL, self.gctrl.value)
        for i, p in enumerate(self.gp):
            sel = self.evtsel[i]
            p.config = sel
            code = sel & 0xFF
            p.event = EventKind(code) if code < len(EventKind) else None
            p.usr, p.os, p.int_en, p.local_en = bool(sel & USR), bool(sel & OS), bool(sel & INT), bool(sel & EN)
            fold_enables(p, gctrl, guest_gctrl)
        for p in self.fixed:
            f = self.fixed_ctrl
            p.config = 0x01
            p.event = EventKind.INSTRUCTIONS
            p.os, p.usr, p.int_en = bool(f & 1), bool(f & 2), bool(f & 8)
            p.local_en = p.os or p.usr
            fold_enables(p, gctrl, guest_gctrl)

    def rdpmc(self, ecx: int) -> int:
        idx = ecx & 0xFFFF
        p = self.pmc(FIXED_BASE + idx if ecx & (1 << 30) else idx)
        if p is None or ecx & ~((1 << 30) | 0xFFFF):
            raise gp(f"RDPMC {ecx:#x}")
        return self.read_counter(p)

    def eventsel_msr(self, pmc: Pmc) -> int | None:
        return None if pmc.is_fixed else EVTSEL + pmc.idx

    def eventsel_msrs(self, pmc: Pmc) -> tuple[int, ...]:
        return () if pmc.is_fixed else (EVTSEL + pmc.idx, LEGACY_EVTSEL + pmc.idx)

    def counter_msrs(self, pmc: Pmc) -> tuple[int, ...]:
        return (FIXED0,) if pmc.is_fixed else (CTR + pmc.idx, LEGACY_CTR + pmc.idx)

    def control_msrs(self) -> tuple[int, ...]:
        sels = tuple(m for p in self.gp for m in self.eventsel_msrs(p))
        return sels + ((FIXED_CTRL,) if self.fixed else ())

    def global_msrs(self) -> dict[str, int]:
        return {"ctrl": GCTRL, "status": GSTATUS, "status_clr": GSTATUS_CLR}

    def fixed_ctrl_msr(self) -> int | None:
        return FIXED_CTRL if self.fixed else None

    def rdpmc_ecx(self, pmc: Pmc) -> int:
        return (1 << 30) | (pmc.idx - FIXED_BASE) if pmc.is_fixed else pmc.idx


class ToyDriver:
    """The toy's perf driver (shape of every vendor driver)."""

    GENERIC = {
        "cycles": EventKind.CYCLES,
        "instructions": EventKind.INSTRUCTIONS,
        "branches": EventKind.BRANCHES,
        "branch-misses": EventKind.BRANCH_MISSES,
        "cache-references": EventKind.LLC_REFERENCES,
        "cache-misses": EventKind.LLC_MISSES,
        "ref-cycles": EventKind.REF_CYCLES,
    }

    def __init__(self) -> None:
        self._enum: dict[int, tuple[int, int]] = {}
        self._gctrl: dict[int, GlobalCtrlSplit] = {}

    def _counters(self, port: RegisterPort) -> tuple[int, int]:
        key = id(port)
        if key not in self._enum:
            a, b, _, _ = port.cpuid(TOY_CPUID_LEAF, 0)
            self._enum[key] = (a, b)
        return self._enum[key]

    def counter_mask(self, port: RegisterPort) -> int:
        n, f = self._counters(port)
        return ((1 << n) - 1) | (((1 << f) - 1) << FIXED_BASE)

    def hw_event(self, attr: PerfEventAttr, port: RegisterPort) -> HwEvent:
        if attr.branch_sample_type:
            raise PerfError(errno.EOPNOTSUPP, "toy/basic has no LBR")
        if attr.type == "hardware":
            if attr.config not in self.GENERIC:
                raise PerfError(errno.ENOENT, f"unknown hardware event {attr.config!r}")
            code = int(self.GENERIC[attr.config])
        else:
            if not isinstance(attr.config, int) or attr.config & ~0xFF:
                raise PerfError(errno.EINVAL, "raw config is an 8-bit event code on toy/basic")
            code = attr.config
        n, f = self._counters(port)
        mask = (1 << n) - 1
        if code == EventKind.BRANCHES:
            mask &= 0b11
        if code == EventKind.INSTRUCTIONS and f:
            mask |= 1 << FIXED_BASE
        sel = code | (0 if attr.exclude_user else USR) | (0 if attr.exclude_kernel else OS) | INT
        kind = code if code < len(EventKind) else None
        return HwEvent(
            config=sel,
            mask=mask,
            exclude_host=attr.exclude_host,
            exclude_guest=attr.exclude_guest,
            usr=not attr.exclude_user,
            os=not attr.exclude_kernel,
            kind=kind,
        )

    def width(self, port: RegisterPort, idx: int) -> int:
        return 48

    def _set_global(self, port: RegisterPort, idx: int, on: bool, hw: HwEvent) -> None:
        """The per-entry host/guest split of intel_guest_get_msrs(): the host value drops
        guest-only (exclude_host) events, the VM-entry value drops host-only ones."""
        split = self._gctrl.setdefault(id(port), GlobalCtrlSplit())
        split.set(idx, on, exclude_guest=hw.exclude_guest, exclude_host=hw.exclude_host)
        split.apply(port, GCTRL)

    def start(self, port: RegisterPort, hw: HwEvent, idx: int, value: int) -> None:
        if idx >= FIXED_BASE:
            port.wrmsr(FIXED0, value)
            ctrl = (1 if hw.os else 0) | (2 if hw.usr else 0) | 8
            port.wrmsr(FIXED_CTRL, ctrl)
        else:
            port.wrmsr(CTR + idx, value)
            port.wrmsr(EVTSEL + idx, hw.config | EN)
        self._set_global(port, idx, True, hw)

    def stop(self, port: RegisterPort, hw: HwEvent, idx: int) -> int:
        self._set_global(port, idx, False, hw)
        if idx >= FIXED_BASE:
            port.wrmsr(FIXED_CTRL, 0)
            return port.rdmsr(FIXED0)
        port.wrmsr(EVTSEL + idx, 0)
        return port.rdmsr(CTR + idx)

    def read(self, port: RegisterPort, idx: int) -> int:
        return port.rdmsr(FIXED0 if idx >= FIXED_BASE else CTR + idx)

    def write(self, port: RegisterPort, idx: int, value: int) -> None:
        port.wrmsr(FIXED0 if idx >= FIXED_BASE else CTR + idx, value)

    def ack(self, port: RegisterPort, idx: int) -> None:
        port.wrmsr(GSTATUS_CLR, 1 << idx)


class ToyModel:
    name = "toy/basic"
    #: the register model and driver classes (a test may subclass them: mutation tests)
    pmu_class: type[ToyPmu] = ToyPmu
    driver_class: type[ToyDriver] = ToyDriver
    vendor = "toy"
    freq_hz = 3_000_000_000
    cost_preset: str | None = None  # the core's defaults
    features: dict[str, Any] = {}

    def __init__(self, options: dict[str, Any]) -> None:
        unknown = set(options) - {"gp_counters"}
        if unknown:
            raise ConfigError("model_options", f"unknown {sorted(unknown)}", "gp_counters")
        self.gp_n = parse_int("toy/basic.gp_counters", options.get("gp_counters", 4), minimum=0, maximum=32)
        self.caps = PmuCapabilities(2, self.gp_n, 1, 48, 48, True, True)

    def resolve_guest(self, requested: GuestPmuConfig) -> GuestPmuConfig:
        return clamp_guest(requested, self.caps, self.name)

    def make_pmu(self, guest: GuestPmuConfig | None = None) -> ToyPmu:
        if guest is None:
            return self.pmu_class(self.gp_n, 1, guest=False)
        return self.pmu_class(guest.gp_counters or 0, guest.fixed_counters or 0, guest=True)

    def make_driver(self) -> ToyDriver:
        return self.driver_class()

    def cpuid_table(self, guest: GuestPmuConfig | None = None) -> CpuidTable:
        t = CpuidTable()
        t.set(0, (TOY_CPUID_LEAF, 0x796F54, 0, 0))
        n, f = (self.gp_n, 1) if guest is None else (guest.gp_counters or 0, guest.fixed_counters or 0)
        t.set(TOY_CPUID_LEAF, (n, f, 48, 0))
        t.set(0xD, (1 << 3, 0, 0, 0), subleaf=1)  # XSAVES, no supervisor component
        return t

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "gp": self.gp_n, "fixed": 1}


class ReferenceMode:
    """The ideal vPMU: intercept everything, count guest work exactly on the vCPU's PMU."""

    def __init__(self, model: Any, options: dict[str, Any]) -> None:
        self.model = model

    @hookimpl
    def vpmu_vcpu_create(self, vcpu: Any) -> None:
        vcpu.direct_count = True

    @hookimpl
    def vpmu_instruction_retired(self, vcpu: Any) -> None:
        """Counted under the state after the instruction took effect (DESIGN §5): one
        instruction and no guest cycle, as the ground truth books it."""
        ov = vcpu.pmu.accrue_plan(vcpu.pmu.plan(True), EMULATED_INSTRUCTION, vcpu.cpl)
        for pmc, _ in ov or ():
            if vcpu.pmu.raise_overflow(pmc):
                vcpu.request_pmi()


@hookimpl
def vpmu_register_cpu_models(register: Any) -> None:
    register(
        CpuModelSpec(
            name="toy/basic", vendor="toy", factory=ToyModel, description="test fixture CPU", cost_presets={"toy": {}}
        )
    )


@hookimpl
def vpmu_register_modes(register: Any) -> None:
    register(ModeSpec(name="reference", factory=ReferenceMode, description="ideal vPMU (test reference)"))
