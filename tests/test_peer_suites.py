"""The peer suites, replayed through the public API (DESIGN §5).

Each block below replays one real test program, check by check, as its guest code does it:
the guest discovers its PMU through CPUID (and PERF_CAPABILITIES), programs counters with
`vcpu.wrmsr`, runs the measured loop as `vcpu.execute(Work(...))`, reads with
`vcpu.rdmsr`/`vcpu.rdpmc`, takes PMIs through the x2APIC LVTPC (0x834) into `vcpu.pmis`,
and expects #GP as `GuestFault` vector 13. Every check runs under both modes.

- kvm-unit-tests `x86/pmu.c` (main, check_counters and its checks; the "full-width writes"
  pass and check_gp_counters_write_width; the AMD "K7" pass) -> `test_kut_pmu_*`
- kvm-unit-tests `x86/pmu_lbr.c` -> `test_kut_pmu_lbr_*`
- selftests `x86/pmu_counters_test.c` (test_arch_events, test_gp_counters,
  test_fixed_counters) -> `test_sel_counters_*`
- selftests `x86/pmu_event_filter_test.c` -> `test_sel_filter_*`
- selftests `x86/vmx_pmu_caps_test.c` (the guest side: guest_wrmsr_perf_capabilities)
  -> `test_sel_vmx_pmu_caps_*`

Where a suite checks a range, the range is asserted as the suite does it; where the
counting window of DESIGN §5 makes the value exact, the exact value is asserted too
(named `exact` in the report lines).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest

import vpmu_core as vpmu

MODES = ("emulated", "mediated")
GP_VECTOR = 13

# MSRs (Linux msr-index.h; facts x86-pmu-registers.md §1.4, §5.2)
MSR_IA32_PERFCTR0 = 0xC1
MSR_IA32_PMC0 = 0x4C1
MSR_P6_EVNTSEL0 = 0x186
MSR_CORE_PERF_FIXED_CTR0 = 0x309
MSR_IA32_PERF_CAPABILITIES = 0x345
MSR_CORE_PERF_FIXED_CTR_CTRL = 0x38D
MSR_CORE_PERF_GLOBAL_STATUS = 0x38E
MSR_CORE_PERF_GLOBAL_CTRL = 0x38F
MSR_CORE_PERF_GLOBAL_OVF_CTRL = 0x390
MSR_IA32_DEBUGCTLMSR = 0x1D9
MSR_LBR_SELECT = 0x1C8
MSR_LBR_TOS = 0x1C9
MSR_LBR_CORE_FROM, MSR_LBR_CORE_TO = 0x40, 0x60
MSR_LBR_NHM_FROM, MSR_LBR_NHM_TO = 0x680, 0x6C0
MSR_K7_EVNTSEL0 = 0xC0010000
MSR_K7_PERFCTR0 = 0xC0010004
MSR_F15H_PERF_CTL0 = 0xC0010200
MSR_F15H_PERF_CTR0 = 0xC0010201
MSR_AMD64_PERF_CNTR_GLOBAL_STATUS = 0xC0000300
MSR_AMD64_PERF_CNTR_GLOBAL_CTL = 0xC0000301
MSR_AMD64_PERF_CNTR_GLOBAL_STATUS_CLR = 0xC0000302
APIC_LVTPC = 0x834  # x2APIC
PMI_VECTOR = 32  # kvm-unit-tests lib/x86/pmu.h

EVNTSEL_USR = 1 << 16
EVNTSEL_OS = 1 << 17
EVNTSEL_INT = 1 << 20
EVNTSEL_EN = 1 << 22
EVNTSEL_CMASK_SHIFT = 24
PMU_CAP_FW_WRITES = 1 << 13
PMU_CAP_LBR_FMT = 0x3F
INTEL_RDPMC_FIXED = 1 << 30
INTEL_RDPMC_FAST = 1 << 31
FIXED_CNT_INDEX = 32

INTEL_VENDOR_EBX = 0x756E6547  # "Genu"


def make_vcpu(
    cpu: str,
    mode: str,
    pmu: vpmu.GuestPmuConfig | None = None,
    facilities: tuple[str, ...] = (),
    mode_options: dict[str, Any] | None = None,
    vcpus: int = 1,
    seed: int = 0,
) -> Any:
    """One VM on host CPU 0 with the default (realistic) background exit profile: the
    counting window holds whatever exits happen in between (DESIGN §5)."""
    host = vpmu.compose(cpu=cpu, mode=mode, facilities=facilities, cpus=1, seed=seed, mode_options=mode_options or {})
    vm = host.create_vm(vcpus=vcpus, pin=[0] * vcpus, pmu=pmu or vpmu.GuestPmuConfig())
    return vm.vcpus[0]


def make_vcpu_or_skip(*args: Any, **kw: Any) -> Any:
    """make_vcpu, skipping compositions KVM refuses (the mediated vPMU needs Intel v4+ with
    full-width writes or AMD PerfMonV2)."""
    try:
        return make_vcpu(*args, **kw)
    except vpmu.ConfigError as e:
        pytest.skip(str(e))


def faults(fn: Callable[..., Any], *args: Any, out: list[int] | None = None) -> int:
    """kvm-unit-tests test_for_exception / selftests *_safe: the vector, 0 if none (the
    result, if any, appended to `out`)."""
    try:
        r = fn(*args)
    except vpmu.GuestFault as e:
        return e.vector
    if out is not None:
        out.append(r)
    return 0


def u64(x: int) -> int:
    return x & ((1 << 64) - 1)


@dataclass
class Report:
    """kvm-unit-tests `report()`: every check keeps its name and outcome."""

    lines: list[tuple[str, bool, str]] = field(default_factory=list)
    prefix: list[str] = field(default_factory=list)

    def __call__(self, ok: bool, name: str, detail: str = "") -> None:
        self.lines.append(("/".join([*self.prefix, name]), bool(ok), detail))

    def failures(self, start: str = "") -> list[tuple[str, str]]:
        return [(n, d) for n, ok, d in self.lines if not ok and n.startswith(start)]


# =========================================================================================
# kvm-unit-tests x86/pmu.c
# =========================================================================================
N = 1_000_000


def kut_loop(v: Any) -> None:
    """`loop()`: N iterations of mov (%1),%2; add $64,%1; 7 x nop; loop 1b: 10 N
    instructions, N branches, a load per 64-byte line of a N*64-byte buffer."""
    v.execute(
        vpmu.Work(
            instructions=10 * N,
            branches=N,
            cycles=5 * N,
            llc_references=N // 10,
            llc_misses=N // 20,
            branch_misses=N // 1000,
            topdown_slots=20 * N,
        )
    )


@dataclass
class PmuEvent:
    name: str
    unit_sel: int
    min: float
    max: float


INTEL_GP_EVENTS = [
    PmuEvent("core cycles", 0x003C, 1 * N, 50 * N),
    PmuEvent("instructions", 0x00C0, 10 * N, 10.2 * N),
    PmuEvent("ref cycles", 0x013C, 1 * N, 30 * N),
    PmuEvent("llc references", 0x4F2E, 1, 2 * N),
    PmuEvent("llc misses", 0x412E, 1, 1 * N),
    PmuEvent("branches", 0x00C4, 1 * N, 1.1 * N),
    PmuEvent("branch misses", 0x00C5, 0, 0.1 * N),
]
AMD_GP_EVENTS = [
    PmuEvent("core cycles", 0x0076, 1 * N, 50 * N),
    PmuEvent("instructions", 0x00C0, 10 * N, 10.2 * N),
    PmuEvent("branches", 0x00C2, 1 * N, 1.1 * N),
    PmuEvent("branch misses", 0x00C3, 0, 0.1 * N),
]
FIXED_EVENTS = [
    PmuEvent("fixed 0", MSR_CORE_PERF_FIXED_CTR0, 10 * N, 10.2 * N),
    PmuEvent("fixed 1", MSR_CORE_PERF_FIXED_CTR0 + 1, 1 * N, 30 * N),
    PmuEvent("fixed 2", MSR_CORE_PERF_FIXED_CTR0 + 2, 0.1 * N, 30 * N),
]
#: check_emulated_instr: instructions and branches in its asm block
EXPECTED_INSTR, EXPECTED_BRNCH = 17, 5


@dataclass
class Cnt:
    """pmu_counter_t"""

    ctr: int = 0
    config: int = 0
    count: int = 0
    idx: int = 0


class KutPmu:
    """lib/x86/pmu.c `pmu_init()` and lib/x86/pmu.h, as the guest sees it."""

    def __init__(self, v: Any) -> None:
        self.v = v
        self.is_intel = v.cpuid(0, 0)[1] == INTEL_VENDOR_EBX
        self.version = self.nr_fixed_counters = self.fixed_counter_width = 0
        self.perf_cap = 0
        if self.is_intel:
            eax, ebx, _ecx, edx = v.cpuid(0xA, 0)
            self.version = eax & 0xFF
            if self.version > 1:
                self.nr_fixed_counters = edx & 0x1F
                self.fixed_counter_width = (edx >> 5) & 0xFF
            self.nr_gp_counters = (eax >> 8) & 0xFF
            self.gp_counter_width = (eax >> 16) & 0xFF
            length = (eax >> 24) & 0xFF
            self.arch_event_available = ~ebx & ((1 << length) - 1)
            if v.cpuid(1, 0)[2] & (1 << 15):  # PDCM
                self.perf_cap = v.rdmsr(MSR_IA32_PERF_CAPABILITIES)
            self.msr_gp_counter_base = MSR_IA32_PERFCTR0
            self.msr_gp_event_select_base = MSR_P6_EVNTSEL0
            if self.version > 1:
                self.msr_global_status = MSR_CORE_PERF_GLOBAL_STATUS
                self.msr_global_ctl = MSR_CORE_PERF_GLOBAL_CTRL
                self.msr_global_status_clr = MSR_CORE_PERF_GLOBAL_OVF_CTRL
            self.gp_events = INTEL_GP_EVENTS
        else:
            if v.cpuid(0x80000001, 0)[2] & (1 << 23):  # PERFCTR_CORE
                eax22, ebx22, _, _ = v.cpuid(0x80000022, 0)
                if eax22 & 1:  # PerfMonV2
                    self.version = 2
                    self.nr_gp_counters = ebx22 & 0xF
                else:
                    self.nr_gp_counters = 6
                self.msr_gp_counter_base = MSR_F15H_PERF_CTR0
                self.msr_gp_event_select_base = MSR_F15H_PERF_CTL0
            else:
                self.nr_gp_counters = 4
                self.msr_gp_counter_base = MSR_K7_PERFCTR0
                self.msr_gp_event_select_base = MSR_K7_EVNTSEL0
            self.gp_counter_width = 48
            self.arch_event_available = (1 << 32) - 1
            if self.version > 1:
                self.msr_global_status = MSR_AMD64_PERF_CNTR_GLOBAL_STATUS
                self.msr_global_ctl = MSR_AMD64_PERF_CNTR_GLOBAL_CTL
                self.msr_global_status_clr = MSR_AMD64_PERF_CNTR_GLOBAL_STATUS_CLR
            self.gp_events = AMD_GP_EVENTS
        self.reset_all_counters()

    # lib/x86/pmu.h
    def gp_counter(self, i: int) -> int:
        if self.msr_gp_counter_base == MSR_F15H_PERF_CTR0:
            return self.msr_gp_counter_base + 2 * i
        return self.msr_gp_counter_base + i

    def gp_event_select(self, i: int) -> int:
        if self.msr_gp_event_select_base == MSR_F15H_PERF_CTL0:
            return self.msr_gp_event_select_base + 2 * i
        return self.msr_gp_event_select_base + i

    @property
    def has_global(self) -> bool:  # this_cpu_has_perf_global_ctrl / _status
        return self.version > 1

    def use_full_writes(self) -> bool:
        return self.msr_gp_counter_base == MSR_IA32_PMC0

    def has_full_writes(self) -> bool:
        return bool(self.perf_cap & PMU_CAP_FW_WRITES)

    def event_available(self, i: int) -> bool:
        return bool(self.arch_event_available & (1 << i))

    def reset_all_counters(self) -> None:
        for i in range(self.nr_gp_counters):
            self.v.wrmsr(self.gp_event_select(i), 0)
            self.v.wrmsr(self.gp_counter(i), 0)
        if self.nr_fixed_counters:
            self.v.wrmsr(MSR_CORE_PERF_FIXED_CTR_CTRL, 0)
            for i in range(self.nr_fixed_counters):
                self.v.wrmsr(MSR_CORE_PERF_FIXED_CTR0 + i, 0)

    def clear_global_status(self) -> None:
        self.v.wrmsr(self.msr_global_status_clr, self.v.rdmsr(self.msr_global_status))


class KutPmuTest:
    """x86/pmu.c: each method is the suite function of the same name."""

    def __init__(self, v: Any, report: Report) -> None:
        self.v = v
        self.pmu = KutPmu(v)
        self.report = report
        self.fixed_counters_num = min(self.pmu.nr_fixed_counters, len(FIXED_EVENTS))

    # ---- helpers of the suite ----
    def is_gp(self, c: Cnt) -> bool:
        if not self.pmu.is_intel:
            return True
        return c.ctr < MSR_CORE_PERF_FIXED_CTR0 or c.ctr >= MSR_IA32_PMC0

    def event_to_global_idx(self, c: Cnt) -> int:
        p = self.pmu
        if p.is_intel:
            return c.ctr - (p.msr_gp_counter_base if self.is_gp(c) else MSR_CORE_PERF_FIXED_CTR0 - FIXED_CNT_INDEX)
        if p.msr_gp_counter_base == MSR_F15H_PERF_CTR0:
            return (c.ctr - p.msr_gp_counter_base) // 2
        return c.ctr - p.msr_gp_counter_base

    def get_counter_event(self, c: Cnt) -> PmuEvent | None:
        if self.is_gp(c):
            for e in self.pmu.gp_events:
                if e.unit_sel == (c.config & 0xFFFF):
                    return e
            return None
        return FIXED_EVENTS[c.ctr - MSR_CORE_PERF_FIXED_CTR0]

    def global_enable(self, c: Cnt) -> None:
        if not self.pmu.has_global:
            return
        c.idx = self.event_to_global_idx(c)
        ctl = self.pmu.msr_global_ctl
        self.v.wrmsr(ctl, self.v.rdmsr(ctl) | (1 << c.idx))

    def global_disable(self, c: Cnt) -> None:
        if not self.pmu.has_global:
            return
        ctl = self.pmu.msr_global_ctl
        self.v.wrmsr(ctl, self.v.rdmsr(ctl) & ~(1 << c.idx))

    def start_event_(self, c: Cnt, count: int) -> None:
        v = self.v
        c.count = count
        v.wrmsr(c.ctr, u64(c.count))
        if self.is_gp(c):
            v.wrmsr(self.pmu.gp_event_select(self.event_to_global_idx(c)), c.config | EVNTSEL_EN)
        else:
            ctrl = v.rdmsr(MSR_CORE_PERF_FIXED_CTR_CTRL)
            shift = (c.ctr - MSR_CORE_PERF_FIXED_CTR0) * 4
            usrospmi = 0
            if c.config & EVNTSEL_OS:
                usrospmi |= 1 << 0
            if c.config & EVNTSEL_USR:
                usrospmi |= 1 << 1
            if c.config & EVNTSEL_INT:
                usrospmi |= 1 << 3
            ctrl = (ctrl & ~(0xF << shift)) | (usrospmi << shift)
            v.wrmsr(MSR_CORE_PERF_FIXED_CTR_CTRL, ctrl)
        self.global_enable(c)
        v.wrmsr(APIC_LVTPC, PMI_VECTOR)

    def start_event(self, c: Cnt) -> None:
        self.start_event_(c, 0)

    def stop_event(self, c: Cnt) -> None:
        v = self.v
        self.global_disable(c)
        if self.is_gp(c):
            v.wrmsr(self.pmu.gp_event_select(self.event_to_global_idx(c)), c.config & ~EVNTSEL_EN)
        else:
            ctrl = v.rdmsr(MSR_CORE_PERF_FIXED_CTR_CTRL)
            shift = (c.ctr - MSR_CORE_PERF_FIXED_CTR0) * 4
            v.wrmsr(MSR_CORE_PERF_FIXED_CTR_CTRL, ctrl & ~(0xF << shift))
        c.count = v.rdmsr(c.ctr)

    def measure_many(self, cnts: list[Cnt]) -> None:
        for c in cnts:
            self.start_event(c)
        kut_loop(self.v)
        for c in cnts:
            self.stop_event(c)

    def measure_one(self, c: Cnt) -> None:
        self.measure_many([c])

    def measure_(self, c: Cnt, count: int) -> None:
        self.start_event_(c, count)
        kut_loop(self.v)
        self.stop_event(c)

    @staticmethod
    def verify_event(count: int, e: PmuEvent) -> bool:
        return e.min <= count <= e.max

    def verify_counter(self, c: Cnt) -> bool:
        e = self.get_counter_event(c)
        return e is not None and self.verify_event(c.count, e)

    def check_irq(self, before: int) -> bool:
        """The guest enables IRQs and spins: a PMI is pending iff one was delivered."""
        return len(self.v.pmis) > before

    # ---- the checks ----
    def check_invalid_rdpmc_gp(self) -> None:
        self.report(faults(lambda: self.v.rdpmc(64)) == GP_VECTOR, "Expected #GP on RDPMC(64)")

    def check_gp_counters(self) -> None:
        for i, e in enumerate(self.pmu.gp_events):
            if not self.pmu.event_available(i):
                continue
            c = Cnt(config=EVNTSEL_OS | EVNTSEL_USR | e.unit_sel)
            for n in range(self.pmu.nr_gp_counters):
                c.ctr = self.pmu.gp_counter(n)
                self.measure_one(c)
                self.report(self.verify_event(c.count, e), f"{e.name}-{n}", f"count={c.count}")

    def check_fixed_counters(self) -> None:
        c = Cnt(config=EVNTSEL_OS | EVNTSEL_USR)
        for i in range(self.fixed_counters_num):
            c.ctr = FIXED_EVENTS[i].unit_sel
            self.measure_one(c)
            self.report(self.verify_event(c.count, FIXED_EVENTS[i]), f"fixed-{i}", f"count={c.count}")

    def check_rdpmc(self) -> None:
        p, v = self.pmu, self.v
        val = 0xFF0123456789
        self.report.prefix.append("rdpmc")
        for i in range(p.nr_gp_counters):
            if p.msr_gp_counter_base == MSR_IA32_PERFCTR0:
                x = u64(((val & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000)  # (s64)(s32)val
            else:
                x = val
            x &= (1 << p.gp_counter_width) - 1
            v.wrmsr(p.gp_counter(i), val)
            self.report(v.rdpmc(i) == x, f"cntr-{i}")
            out: list[int] = []
            exc = faults(v.rdpmc, i | INTEL_RDPMC_FAST, out=out)
            if exc:
                self.report(exc == GP_VECTOR, f"fast-{i} (skip: #GP)")
            else:
                # the suite: report(cnt.count == (u32)val); KVM never has a "fast" mode
                # (pmu_counters_test asserts the #GP on Intel), so only AMD may get here.
                self.report(not p.is_intel and out[0] == val & 0xFFFFFFFF, f"fast-{i}", f"read={out[0]:#x}")
        for i in range(p.nr_fixed_counters):
            x = val & ((1 << p.fixed_counter_width) - 1)
            v.wrmsr(MSR_CORE_PERF_FIXED_CTR0 + i, x)
            self.report(v.rdpmc(i | INTEL_RDPMC_FIXED) == x, f"fixed cntr-{i}")
            exc = faults(v.rdpmc, i | INTEL_RDPMC_FIXED | INTEL_RDPMC_FAST)
            self.report(exc == GP_VECTOR, f"fixed fast-{i} (skip: #GP)")
        self.report.prefix.pop()

    def check_counters_many(self) -> None:
        p = self.pmu
        cnts: list[Cnt] = []
        i = n = 0
        while n < p.nr_gp_counters:
            if p.event_available(i):
                cnts.append(
                    Cnt(
                        ctr=p.gp_counter(n),
                        config=EVNTSEL_OS | EVNTSEL_USR | p.gp_events[i % len(p.gp_events)].unit_sel,
                    )
                )
                n += 1
            i += 1
        for i in range(self.fixed_counters_num):
            cnts.append(Cnt(ctr=FIXED_EVENTS[i].unit_sel, config=EVNTSEL_OS | EVNTSEL_USR))
        self.measure_many(cnts)
        bad = [(hex(c.ctr), hex(c.config), c.count) for c in cnts if not self.verify_counter(c)]
        self.report(not bad, "all counters", str(bad))

    def measure_for_overflow(self, c: Cnt) -> int:
        self.measure_(c, 0)
        assert c.count > 1
        return 1 - c.count

    def check_counter_overflow(self) -> None:
        p, v = self.pmu, self.v
        c = Cnt(ctr=p.gp_counter(0), config=EVNTSEL_OS | EVNTSEL_USR | p.gp_events[1].unit_sel)
        overflow_preset = self.measure_for_overflow(c)
        if p.has_global:
            p.clear_global_status()
        self.report.prefix.append("overflow")
        for i in range(p.nr_gp_counters + 1):
            c.count = overflow_preset
            if p.use_full_writes():
                c.count &= (1 << p.gp_counter_width) - 1
            if i == p.nr_gp_counters:
                if not p.is_intel or not p.nr_fixed_counters:
                    break
                c.ctr = FIXED_EVENTS[0].unit_sel
                c.count = self.measure_for_overflow(c)
                c.count &= (1 << p.gp_counter_width) - 1
            else:
                c.ctr = p.gp_counter(i)
            if i % 2:
                c.config |= EVNTSEL_INT
            else:
                c.config &= ~EVNTSEL_INT
            idx = self.event_to_global_idx(c)
            pmis = len(v.pmis)
            self.measure_(c, c.count)
            if p.is_intel:
                self.report(c.count == 1, f"cntr-{i}", f"count={c.count:#x}")
            else:
                self.report(c.count == 0xFFFFFFFFFFFF or c.count < 7, f"cntr-{i}", f"count={c.count:#x}")
                self.report(c.count == 1, f"cntr-{i} exact", f"count={c.count:#x}")
            if not p.has_global:
                continue
            status = v.rdmsr(p.msr_global_status)
            self.report(bool(status & (1 << idx)), f"status-{i}", f"status={status:#x}")
            v.wrmsr(p.msr_global_status_clr, status)
            status = v.rdmsr(p.msr_global_status)
            self.report(not status & (1 << idx), f"status clear-{i}", f"status={status:#x}")
            self.report(self.check_irq(pmis) == bool(i % 2), f"irq-{i}", f"pmis={v.pmis[pmis:]}")
        self.report.prefix.pop()

    def check_gp_counter_cmask(self) -> None:
        p = self.pmu
        c = Cnt(ctr=p.gp_counter(0), config=EVNTSEL_OS | EVNTSEL_USR | p.gp_events[1].unit_sel)
        c.config |= 0x2 << EVNTSEL_CMASK_SHIFT
        self.measure_one(c)
        self.report(c.count < p.gp_events[1].min, "cmask", f"count={c.count}")

    def check_running_counter_wrmsr(self) -> None:
        p, v = self.pmu, self.v
        evt = Cnt(ctr=p.gp_counter(0), config=EVNTSEL_OS | EVNTSEL_USR | p.gp_events[1].unit_sel)
        self.report.prefix.append("running counter wrmsr")
        self.start_event(evt)
        kut_loop(v)
        v.wrmsr(p.gp_counter(0), 0)
        self.stop_event(evt)
        self.report(evt.count < p.gp_events[1].min, "cntr", f"count={evt.count}")
        if p.has_global:
            p.clear_global_status()
        self.start_event(evt)
        count = u64(-1)
        if p.use_full_writes():
            count &= (1 << p.gp_counter_width) - 1
        v.wrmsr(p.gp_counter(0), count)
        kut_loop(v)
        self.stop_event(evt)
        if p.has_global:
            status = v.rdmsr(p.msr_global_status)
            self.report(bool(status & 1), "status msr bit", f"status={status:#x}")
        self.report.prefix.pop()

    def check_emulated_instr(self) -> None:
        """Needs KVM_FEP (forced emulation); here the `jne`s are plain guest work and the
        five CPUIDs are the instructions KVM emulates."""
        p, v = self.pmu, self.v
        branch_idx = 5 if p.is_intel else 2
        brnch = Cnt(ctr=p.gp_counter(0), config=EVNTSEL_OS | EVNTSEL_USR | p.gp_events[branch_idx].unit_sel)
        instr = Cnt(ctr=p.gp_counter(1), config=EVNTSEL_OS | EVNTSEL_USR | p.gp_events[1].unit_sel)
        self.report.prefix.append("emulated instruction")
        if p.has_global:
            p.clear_global_status()
        self.start_event(brnch)
        self.start_event(instr)
        brnch_start, instr_start = u64(-EXPECTED_BRNCH), u64(-EXPECTED_INSTR)
        # upstream masks the presets to the counter width (a full-width write of the raw
        # negative value #GPs: bits above the width)
        width = (1 << p.gp_counter_width) - 1
        v.wrmsr(p.gp_counter(0), brnch_start & width)
        v.wrmsr(p.gp_counter(1), instr_start & width)
        v.execute(vpmu.Work(instructions=2))  # mov $0, %eax; cmp $0, %eax
        v.execute(vpmu.Work(instructions=5, branches=5))  # 5 x jne label
        for _ in range(5):
            v.execute(vpmu.Work(instructions=1))  # mov $0xa, %eax
            v.cpuid(0xA, 0)
        if p.has_global:
            v.wrmsr(p.msr_global_ctl, 0)
        self.stop_event(brnch)
        self.stop_event(instr)
        self.report(u64(instr.count - instr_start) >= EXPECTED_INSTR, "instruction count", f"{instr.count:#x}")
        self.report(u64(brnch.count - brnch_start) >= EXPECTED_BRNCH, "branch count", f"{brnch.count:#x}")
        if p.has_global:
            status = v.rdmsr(p.msr_global_status)
            self.report(bool(status & 1), "branch counter overflow", f"status={status:#x}")
            self.report(bool(status & 2), "instruction counter overflow", f"status={status:#x}")
        self.report.prefix.pop()

    def check_counters(self) -> None:
        depth = len(self.report.prefix)
        for name in CHECKS:
            self.report.prefix.append(name)
            try:
                getattr(self, name)()
            except vpmu.GuestFault as e:  # an unexpected #GP kills the guest
                self.report(False, "unexpected fault", str(e))
            finally:
                del self.report.prefix[depth:]

    def check_gp_counters_write_width(self) -> None:
        p, v = self.pmu, self.v
        val_64 = 0xFFFFFF0123456789
        val_32 = val_64 & 0xFFFFFFFF
        val_max_width = val_64 & ((1 << p.gp_counter_width) - 1)
        for i in range(p.nr_gp_counters):
            for w in (val_32, val_max_width, val_64):
                v.wrmsr(MSR_IA32_PERFCTR0 + i, w)
                got = (v.rdmsr(MSR_IA32_PERFCTR0 + i), v.rdmsr(MSR_IA32_PMC0 + i))
                self.report(got == (val_32, val_32), f"PERFCTR{i} <- {w:#x}", str(got))
        for i in range(p.nr_gp_counters):
            v.wrmsr(MSR_IA32_PMC0 + i, val_32)
            got = (v.rdmsr(MSR_IA32_PMC0 + i), v.rdmsr(MSR_IA32_PERFCTR0 + i))
            self.report(got == (val_32, val_32), f"PMC{i} <- val_32", str(got))
            v.wrmsr(MSR_IA32_PMC0 + i, val_max_width)
            got = (v.rdmsr(MSR_IA32_PMC0 + i), v.rdmsr(MSR_IA32_PERFCTR0 + i))
            self.report(got == (val_max_width, val_max_width), f"PMC{i} <- val_max_width", str(got))
            self.report(
                faults(v.wrmsr, MSR_IA32_PMC0 + i, val_64) == GP_VECTOR,
                f"writing unsupported width to MSR_IA32_PMC{i} raises #GP",
            )

    def main(self) -> None:
        """x86/pmu.c main()"""
        p, r = self.pmu, self.report
        self.check_invalid_rdpmc_gp()
        if p.is_intel and not p.version:
            r(True, "skip: No Intel Arch PMU is detected!")
            return
        r.prefix.append("Intel" if p.is_intel else "AMD")
        self.v.wrmsr(APIC_LVTPC, PMI_VECTOR)
        self.check_counters()
        if p.has_full_writes():
            p.msr_gp_counter_base = MSR_IA32_PMC0
            r.prefix.append("full-width writes")
            self.check_counters()
            r.prefix.append("check_gp_counters_write_width")
            self.check_gp_counters_write_width()
            r.prefix.pop()
            r.prefix.pop()
        if not p.is_intel and p.msr_gp_counter_base == MSR_F15H_PERF_CTR0:
            # the K7 pass (the suite runs it on every AMD host; without PERFCTR_CORE the
            # first pass already used the K7 MSRs)
            r.prefix.append("K7")
            p.nr_gp_counters = 4
            p.msr_gp_counter_base = MSR_K7_PERFCTR0
            p.msr_gp_event_select_base = MSR_K7_EVNTSEL0
            self.check_counters()
            r.prefix.pop()
        r.prefix.pop()


CHECKS = (
    "check_emulated_instr",
    "check_gp_counters",
    "check_fixed_counters",
    "check_rdpmc",
    "check_counters_many",
    "check_counter_overflow",
    "check_gp_counter_cmask",
    "check_running_counter_wrmsr",
)

#: (id, cpu, guest PMU config): Intel icelake (v5, FW writes), skylake (v4), a smaller guest,
#: a guest without full-width writes, a v1 guest; AMD zen4 (PerfMonV2), zen2, k8.
KUT_CONFIGS: dict[str, tuple[str, vpmu.GuestPmuConfig]] = {
    "icelake": ("intel/icelake", vpmu.GuestPmuConfig()),
    "skylake": ("intel/skylake", vpmu.GuestPmuConfig()),
    "icelake-small": ("intel/icelake", vpmu.GuestPmuConfig(gp_counters=3, fixed_counters=2)),
    "icelake-nofw": ("intel/icelake", vpmu.GuestPmuConfig(full_width_writes=False)),
    "icelake-v2": ("intel/icelake", vpmu.GuestPmuConfig(version=2)),
    "zen4": ("amd/zen4", vpmu.GuestPmuConfig()),
    "zen4-v1": ("amd/zen4", vpmu.GuestPmuConfig(version=1)),
    "zen2": ("amd/zen2", vpmu.GuestPmuConfig()),
    "k8": ("amd/k8", vpmu.GuestPmuConfig()),
}


@cache
def kut_pmu_run(config: str, mode: str) -> Report:
    cpu, pmu = KUT_CONFIGS[config]
    report = Report()
    try:
        v = make_vcpu(cpu, mode, pmu)
    except vpmu.ConfigError as e:  # the mediated vPMU needs Intel v4+/FW writes, AMD PerfMonV2
        pytest.skip(str(e))
    KutPmuTest(v, report).main()
    return report


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", sorted(KUT_CONFIGS))
@pytest.mark.parametrize("check", ["check_invalid_rdpmc_gp", *CHECKS, "check_gp_counters_write_width"])
def test_kut_pmu(check: str, config: str, mode: str) -> None:
    """kvm-unit-tests x86/pmu.c, one suite function (in every pass that runs it)."""
    report = kut_pmu_run(config, mode)

    def mine(name: str) -> bool:
        segs = name.split("/")
        return check in segs or (check == "check_invalid_rdpmc_gp" and "Expected #GP on RDPMC(64)" in segs)

    ran = [n for n, _, _ in report.lines if mine(n)]
    if not ran:
        pytest.skip(f"the suite does not run {check} on this configuration")
    bad = [f for f in report.failures() if mine(f[0])]
    assert not bad, bad


def test_kut_pmu_runs_every_check() -> None:
    """The replay is not vacuous: each configuration reports its checks, and the passes run
    (full-width on FW-capable Intel guests, K7 on AMD hosts with PERFCTR_CORE)."""
    names = {n for n, _, _ in kut_pmu_run("icelake", "emulated").lines}
    assert any(n.startswith("Intel/full-width writes/check_counter_overflow/overflow/cntr-8") for n in names)
    assert not any("full-width" in n for n, _, _ in kut_pmu_run("icelake-nofw", "emulated").lines)
    assert any(n.startswith("AMD/K7/check_counter_overflow") for n, _, _ in kut_pmu_run("zen4", "mediated").lines)
    assert len(kut_pmu_run("icelake", "mediated").lines) > 250


@pytest.mark.parametrize("mode", MODES)
def test_kut_pmu_exact_values(mode: str) -> None:
    """The same sequences with the counting window's exact values (the suite checks ranges):
    measure_one of instructions on a GP counter whose global bit is clear counts the loop
    plus LVTPC write, RDMSR and the disabling WRMSR of GLOBAL_CTRL."""
    v = make_vcpu("intel/icelake", mode)
    t = KutPmuTest(v, Report())
    c = Cnt(ctr=MSR_IA32_PERFCTR0, config=EVNTSEL_OS | EVNTSEL_USR | 0x00C0)
    # GLOBAL_CTRL resets to the GP bits: the EVNTSEL write enables, so the RDMSR and WRMSR
    # of global_enable count too (5 extra), then global_disable leaves bit 0 clear (3 extra).
    t.measure_one(c)
    assert c.count == 10 * N + 5
    t.measure_one(c)
    assert c.count == 10 * N + 3
    b = Cnt(ctr=MSR_IA32_PERFCTR0 + 1, config=EVNTSEL_OS | EVNTSEL_USR | 0x00C4)
    t.measure_one(b)
    assert b.count == N
    f = Cnt(ctr=MSR_CORE_PERF_FIXED_CTR0, config=EVNTSEL_OS | EVNTSEL_USR)
    t.measure_one(f)  # enabled by the GLOBAL_CTRL write: LVTPC, RDMSR, WRMSR
    assert f.count == 10 * N + 3


# =========================================================================================
# kvm-unit-tests x86/pmu_lbr.c
# =========================================================================================
MAX_NUM_LBR_ENTRY = 32
DEBUGCTLMSR_LBR = 1


def kut_pmu_lbr_main(v: Any, report: Report) -> None:
    eax = v.cpuid(10, 0)[0]
    perf_cap = v.rdmsr(MSR_IA32_PERF_CAPABILITIES) if v.cpuid(1, 0)[2] & (1 << 15) else 0
    if not eax & 0xFF:
        report(True, "skip: No pmu is detected!")
        return
    if not perf_cap & PMU_CAP_LBR_FMT:
        report(True, "skip: No LBR is detected!")
        return
    lbr_from, lbr_to = MSR_LBR_CORE_FROM, MSR_LBR_CORE_TO

    def init_lbr_gp(index: int) -> bool:
        def init() -> None:
            v.wrmsr(lbr_from + index, 0)
            v.wrmsr(lbr_to + index, 0)

        return faults(init) == GP_VECTOR

    if init_lbr_gp(0):
        lbr_from, lbr_to = MSR_LBR_NHM_FROM, MSR_LBR_NHM_TO
    if init_lbr_gp(0):
        report(True, "skip: LBR on this platform is not supported!")
        return
    v.wrmsr(MSR_LBR_SELECT, 0)
    v.wrmsr(MSR_LBR_TOS, 0)
    depth = 0
    while depth < MAX_NUM_LBR_ENTRY and not init_lbr_gp(depth):
        depth += 1
    report(depth > 0, "The number of guest LBR entries is good.", f"max={depth}")
    report(depth == 32, "exact: Skylake/Ice Lake depth 32 (facts §3.3)", f"max={depth}")
    v.wrmsr(MSR_IA32_DEBUGCTLMSR, DEBUGCTLMSR_LBR)
    # lbr_test(): a loop with a call, a return and conditional branches. The model records
    # every branch, so TOS ends at (branches mod depth): a multiple of 32 would read 0 and
    # fail the suite's TOS check exactly as hardware would.
    v.execute(vpmu.Work(instructions=2_000_000, branches=400_003, branch_misses=4_000))
    v.wrmsr(MSR_IA32_DEBUGCTLMSR, 0)
    report(v.rdmsr(MSR_LBR_TOS) != 0, "The guest LBR MSR_LBR_TOS value is good.")
    i = 0
    while i < depth and v.rdmsr(lbr_to + i) and v.rdmsr(lbr_from + i):
        i += 1
    report(i == depth, "The guest LBR FROM_IP/TO_IP values are good.", f"{i} of {depth}")


LBR_CONFIGS: dict[str, tuple[str, str, vpmu.GuestPmuConfig, dict[str, Any], bool]] = {
    # id: (cpu, mode, guest config, mode options, does the guest get LBRs)
    "emulated-icelake": ("intel/icelake", "emulated", vpmu.GuestPmuConfig(), {}, True),
    "emulated-skylake": ("intel/skylake", "emulated", vpmu.GuestPmuConfig(), {}, True),
    "emulated-icelake-nolbr": ("intel/icelake", "emulated", vpmu.GuestPmuConfig(lbr=False), {}, False),
    "emulated-icelake-v0": ("intel/icelake", "emulated", vpmu.GuestPmuConfig(version=0), {}, False),
    # the merged mediated vPMU gives guests no LBR (v6 17/44-18/44): the suite skips
    "mediated-icelake": ("intel/icelake", "mediated", vpmu.GuestPmuConfig(), {}, False),
    "mediated-icelake-passthrough": (
        "intel/icelake",
        "mediated",
        vpmu.GuestPmuConfig(),
        {"facilities": "passthrough"},
        True,
    ),
}


@pytest.mark.parametrize("config", sorted(LBR_CONFIGS))
def test_kut_pmu_lbr(config: str) -> None:
    cpu, mode, pmu, options, has_lbr = LBR_CONFIGS[config]
    report = Report()
    kut_pmu_lbr_main(make_vcpu(cpu, mode, pmu, facilities=("lbr",), mode_options=options), report)
    assert not report.failures(), report.failures()
    skipped = any(n.startswith("skip") for n, _, _ in report.lines)
    assert skipped != has_lbr, report.lines


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", ("intel/skylake", "intel/icelake"))
def test_kut_pmu_lbr_without_the_facility_skips(cpu: str, mode: str) -> None:
    """Issue 11: a composition without the LBR facility gives the guest no LBR MSRs, so
    PERF_CAPABILITIES[5:0] must be 0 (vmx_get_perf_capabilities) and pmu_lbr.c skips
    instead of failing on LBR_TOS/FROM #GPs; its DEBUGCTL.LBR writes are dropped, not #GP
    (vmx_is_valid_debugctl)."""
    report = Report()
    v = make_vcpu_or_skip(cpu, mode)
    kut_pmu_lbr_main(v, report)
    assert not report.failures(), report.failures()
    assert any(n.startswith("skip: No LBR") for n, _, _ in report.lines), report.lines
    assert faults(v.wrmsr, MSR_IA32_DEBUGCTLMSR, DEBUGCTLMSR_LBR) == 0
    assert v.rdmsr(MSR_IA32_DEBUGCTLMSR) == 0


# =========================================================================================
# selftests x86/pmu_counters_test.c
# =========================================================================================
NUM_LOOPS = 10
NUM_BRANCH_INSNS_RETIRED = NUM_LOOPS
NUM_INSNS_PER_LOOP = 4
NUM_EXTRA_INSNS = 5
NUM_INSNS_RETIRED = NUM_LOOPS * NUM_INSNS_PER_LOOP + NUM_EXTRA_INSNS

# intel_pmu_arch_events[] (selftests include/x86/pmu.h) and the fixed counter of each
INTEL_ARCH_EVENTS = (0x003C, 0x00C0, 0x013C, 0x4F2E, 0x412E, 0x00C4, 0x00C5, 0x01A4)
CPU_CYCLES, INSNS, REF_CYCLES, LLC_REFS, LLC_MISSES, BRANCHES, BR_MISSES, SLOTS = range(8)
FIXED_OF_EVENT = {CPU_CYCLES: 1, INSNS: 0, REF_CYCLES: 2, SLOTS: 3}
MAX_NR_GP_COUNTERS = 8
MAX_NR_FIXED_COUNTERS = 3


class SelftestFailure(AssertionError):
    """GUEST_ASSERT"""


def guest_assert(ok: bool, msg: str) -> None:
    if not ok:
        raise SelftestFailure(msg)


def this_cpu_property_pmu(v: Any) -> dict[str, int]:
    eax, ebx, ecx, edx = v.cpuid(0xA, 0)
    return {
        "version": eax & 0xFF,
        "nr_gp": (eax >> 8) & 0xFF,
        "ebx_len": (eax >> 24) & 0xFF,
        "events_mask": ebx,
        "fixed_bitmask": ecx,
        "nr_fixed": edx & 0x1F,
    }


def this_pmu_has_fixed(prop: dict[str, int], i: int) -> bool:
    return prop["nr_fixed"] > i or bool(prop["fixed_bitmask"] & (1 << i))


def base_pmc_msr(v: Any) -> int:
    pdcm = v.cpuid(1, 0)[2] & (1 << 15)
    if pdcm and v.rdmsr(MSR_IA32_PERF_CAPABILITIES) & PMU_CAP_FW_WRITES:
        return MSR_IA32_PMC0
    return MSR_IA32_PERFCTR0


def guest_measure_event(v: Any, ctrl_msr: int, value: int, clflush: bool) -> None:
    """GUEST_MEASURE_EVENT: the enabling WRMSR, mov $10, %ecx, 10 x (clflush|nop, mfence,
    mov, loop), mov, xor, xor, the disabling WRMSR."""
    v.wrmsr(ctrl_msr, value)
    n = 1 + NUM_LOOPS * NUM_INSNS_PER_LOOP + 3
    llc = NUM_LOOPS if clflush else 0
    v.execute(
        vpmu.Work(
            instructions=n,
            branches=NUM_LOOPS,
            cycles=400,
            llc_references=llc,
            llc_misses=llc,
            topdown_slots=1600,
        )
    )
    v.wrmsr(ctrl_msr, 0)


def guest_assert_event_count(v: Any, idx: int, pmc: int, pmc_msr: int, hw_events: int, clflush: bool) -> None:
    count = v.rdpmc(pmc)
    if hw_events & (1 << idx):
        if idx == INSNS:
            guest_assert(count == NUM_INSNS_RETIRED, f"event {idx} pmc {pmc:#x}: {count} != {NUM_INSNS_RETIRED}")
        elif idx == BRANCHES:
            guest_assert(count == NUM_BRANCH_INSNS_RETIRED, f"event {idx} pmc {pmc:#x}: {count}")
        elif idx in (LLC_REFS, LLC_MISSES):
            if clflush:
                guest_assert(count != 0, f"event {idx} pmc {pmc:#x}: 0")
        elif idx in (CPU_CYCLES, REF_CYCLES):
            guest_assert(count != 0, f"event {idx} pmc {pmc:#x}: 0")
        elif idx == SLOTS:
            guest_assert(count >= NUM_INSNS_RETIRED, f"event {idx} pmc {pmc:#x}: {count}")
    # sanity checks: a disabled counter does not count, and a write is read back
    v.execute(vpmu.Work(instructions=NUM_LOOPS, branches=NUM_LOOPS))  # loop .
    guest_assert(v.rdpmc(pmc) == count, f"event {idx} pmc {pmc:#x} counted while disabled")
    v.wrmsr(pmc_msr, 0xDEAD)
    guest_assert(v.rdpmc(pmc) == 0xDEAD, f"pmc {pmc:#x}: write 0xdead not read back")


def guest_test_arch_event(v: Any, idx: int, kvm_pmu_version: int, hw_events: int) -> None:
    prop = this_cpu_property_pmu(v)
    version = min(kvm_pmu_version, prop["version"])
    has_global = version >= 2
    guest_assert(version > 0, "no vPMU")
    base = base_pmc_msr(v)
    clflush = bool(v.cpuid(1, 0)[3] & (1 << 19) or v.cpuid(7, 0)[1] & (1 << 23))
    guest_assert(prop["nr_gp"] > 0, "no GP counters")
    for i in range(prop["nr_gp"]):
        eventsel = EVNTSEL_OS | EVNTSEL_EN | INTEL_ARCH_EVENTS[idx]
        v.wrmsr(MSR_P6_EVNTSEL0 + i, 0)
        if has_global:
            v.wrmsr(MSR_CORE_PERF_GLOBAL_CTRL, 1 << i)
        v.wrmsr(base + i, 0)
        guest_measure_event(v, MSR_P6_EVNTSEL0 + i, eventsel, clflush)
        guest_assert_event_count(v, idx, i, base + i, hw_events, clflush)
    if not has_global or idx not in FIXED_OF_EVENT or not this_pmu_has_fixed(prop, FIXED_OF_EVENT[idx]):
        return
    i = FIXED_OF_EVENT[idx]
    v.wrmsr(MSR_CORE_PERF_FIXED_CTR_CTRL, 0x1 << (4 * i))  # FIXED_PMC_CTRL(i, FIXED_PMC_KERNEL)
    v.wrmsr(MSR_CORE_PERF_FIXED_CTR0 + i, 0)
    guest_measure_event(v, MSR_CORE_PERF_GLOBAL_CTRL, 1 << (32 + i), clflush)
    guest_assert_event_count(v, idx, i | INTEL_RDPMC_FIXED, MSR_CORE_PERF_FIXED_CTR0 + i, hw_events, clflush)


def host_facts(cpu: str) -> tuple[int, int, int, int]:
    """What KVM supports on this host (kvm_cpu_property): version, nr GP, nr fixed, and
    hardware_pmu_arch_events (the host's available architectural events)."""
    host = vpmu.compose(cpu=cpu, mode="emulated", cpus=1, seed=0)
    p = this_cpu_property_pmu(host.create_vm(vcpus=1, pin=[0]).vcpus[0])
    hw = ~p["events_mask"] & ((1 << p["ebx_len"]) - 1) & 0xFF
    return p["version"], p["nr_gp"], p["nr_fixed"], hw


SEL_CPUS = ("intel/icelake", "intel/skylake")
# unavailable masks: 0, all, and each single bit (the suite's "single bits" sweep)
UNAVAILABLE_MASKS = (0, 0xFF, *(1 << k for k in range(8)))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", SEL_CPUS)
@pytest.mark.parametrize("fw", [False, True], ids=["caps0", "fw_writes"])
@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
def test_sel_counters_arch_events(version: int, fw: bool, cpu: str, mode: str) -> None:
    """test_arch_events: every architectural event on every GP counter and on its fixed
    counter counts exactly (instructions 45, branches 10) whatever CPUID.0AH:EBX hides."""
    kvm_version, _, _, hw = host_facts(cpu)  # versions up to max(host, 5), as the suite
    for mask in UNAVAILABLE_MASKS:
        v = make_vcpu(cpu, mode, vpmu.GuestPmuConfig(version=version, full_width_writes=fw, unavailable_events=mask))
        for idx in range(len(INTEL_ARCH_EVENTS)):
            try:
                guest_test_arch_event(v, idx, kvm_version, hw)
            except SelftestFailure as e:
                raise AssertionError(f"v{version} fw={fw} mask={mask:#x}: {e}") from None


def guest_test_rdpmc(v: Any, idx: int, expect_success: bool, expected: int) -> None:
    out: list[int] = []
    vector = faults(v.rdpmc, idx, out=out)
    guest_assert(vector == (0 if expect_success else GP_VECTOR), f"RDPMC({idx:#x}): vector {vector}")
    if expect_success:
        guest_assert(out[0] == expected, f"RDPMC({idx:#x}) = {out[0]:#x}, expected {expected:#x}")


def guest_rd_wr_counters(v: Any, base_msr: int, nr_possible: int, nr_counters: int, or_mask: int) -> None:
    for i in range(nr_possible):
        test_val = 0xFFFF
        msr = base_msr + i
        expect_success = i < nr_counters or bool(or_mask & (1 << i))
        expected_val = test_val if expect_success else 0
        # KVM drops writes to MSR_P6_PERFCTR[0|1] if the counters are unsupported
        expect_gp = not expect_success and msr not in (MSR_IA32_PERFCTR0, MSR_IA32_PERFCTR0 + 1)
        vector = faults(v.wrmsr, msr, test_val)
        guest_assert(vector == (GP_VECTOR if expect_gp else 0), f"WRMSR({msr:#x}): vector {vector}")
        out: list[int] = []
        vector = faults(v.rdmsr, msr, out=out)
        guest_assert(vector == (GP_VECTOR if expect_gp else 0), f"RDMSR({msr:#x}): vector {vector}")
        if not expect_gp:
            guest_assert(out[0] == expected_val, f"RDMSR({msr:#x}) = {out[0]:#x}, expected {expected_val:#x}")
        rdpmc_idx = i | (INTEL_RDPMC_FIXED if base_msr == MSR_CORE_PERF_FIXED_CTR0 else 0)
        guest_test_rdpmc(v, rdpmc_idx, expect_success, expected_val)
        guest_test_rdpmc(v, rdpmc_idx | INTEL_RDPMC_FAST, False, u64(-1))  # never a "fast" mode
        vector = faults(v.wrmsr, msr, 0)
        guest_assert(vector == (GP_VECTOR if expect_gp else 0), f"WRMSR({msr:#x}, 0): vector {vector}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", SEL_CPUS)
@pytest.mark.parametrize("fw", [False, True], ids=["caps0", "fw_writes"])
@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 5])
def test_sel_counters_gp_counters(version: int, fw: bool, cpu: str, mode: str) -> None:
    """test_gp_counters: GLOBAL_CTRL's reset value is the GP bits; counters up to the
    enumerated number read/write (MSR and RDPMC), past it #GP (PERFCTR0/1 writes dropped)."""
    kvm_version, nr_gp_host, _, _ = host_facts(cpu)
    for nr in range(nr_gp_host + 1) if version else (None,):  # a v0 guest has no counters to set
        v = make_vcpu(cpu, mode, vpmu.GuestPmuConfig(version=version, gp_counters=nr, full_width_writes=fw))
        prop = this_cpu_property_pmu(v)
        pmu_version = min(kvm_version, prop["version"])
        nr_gp = prop["nr_gp"] if pmu_version else 0
        try:
            if pmu_version > 1:
                global_ctrl = v.rdmsr(MSR_CORE_PERF_GLOBAL_CTRL)
                guest_assert(global_ctrl == (1 << nr_gp) - 1, f"GLOBAL_CTRL reset {global_ctrl:#x}")
            guest_rd_wr_counters(v, base_pmc_msr(v), MAX_NR_GP_COUNTERS, nr_gp, 0)
        except SelftestFailure as e:
            raise AssertionError(f"v{version} fw={fw} nr_gp={nr}: {e}") from None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", SEL_CPUS)
@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 5])
def test_sel_counters_fixed_counters(version: int, cpu: str, mode: str) -> None:
    """test_fixed_counters: fixed counters up to the enumerated number (or in the v5 bitmask)
    read/write and count; past it WRMSR/RDMSR/RDPMC and enabling them in FIXED_CTR_CTRL or
    GLOBAL_CTRL #GP."""
    kvm_version, _, nr_fixed_host, _ = host_facts(cpu)
    for nr in range(nr_fixed_host + 1) if version >= 2 else (None,):  # v0/v1: no fixed counters
        v = make_vcpu(cpu, mode, vpmu.GuestPmuConfig(version=version, fixed_counters=nr))
        prop = this_cpu_property_pmu(v)
        pmu_version = min(kvm_version, prop["version"])
        nr_fixed = prop["nr_fixed"] if pmu_version >= 2 else 0
        bitmask = prop["fixed_bitmask"] if pmu_version >= 5 else 0
        try:
            guest_rd_wr_counters(v, MSR_CORE_PERF_FIXED_CTR0, MAX_NR_FIXED_COUNTERS, nr_fixed, bitmask)
            for i in range(MAX_NR_FIXED_COUNTERS):
                if i >= nr_fixed and not bitmask & (1 << i):
                    vec = faults(v.wrmsr, MSR_CORE_PERF_FIXED_CTR_CTRL, 0x1 << (4 * i))
                    guest_assert(vec == GP_VECTOR, f"Expected #GP for counter {i} in FIXED_CTR_CTRL")
                    vec = faults(v.wrmsr, MSR_CORE_PERF_GLOBAL_CTRL, 1 << (32 + i))
                    guest_assert(vec == GP_VECTOR, f"Expected #GP for counter {i} in PERF_GLOBAL_CTRL")
                    continue
                v.wrmsr(MSR_CORE_PERF_FIXED_CTR0 + i, 0)
                v.wrmsr(MSR_CORE_PERF_FIXED_CTR_CTRL, 0x1 << (4 * i))
                v.wrmsr(MSR_CORE_PERF_GLOBAL_CTRL, 1 << (32 + i))
                v.execute(vpmu.Work(instructions=NUM_LOOPS, branches=NUM_LOOPS))  # loop .
                v.wrmsr(MSR_CORE_PERF_GLOBAL_CTRL, 0)
                val = v.rdmsr(MSR_CORE_PERF_FIXED_CTR0 + i)
                guest_assert(val != 0, f"fixed counter {i} did not count")
                if i == 0:
                    guest_assert(val == NUM_LOOPS + 1, f"exact: fixed 0 = {val}, expected {NUM_LOOPS + 1}")
        except SelftestFailure as e:
            raise AssertionError(f"v{version} nr_fixed={nr}: {e}") from None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fw", [False, True])
def test_sel_counters_perf_capabilities_controls_full_width_alias(fw: bool, mode: str) -> None:
    """PERF_CAPABILITIES.FW_WRITES (bit 13) enumerates the IA32_A_PMCx alias (0x4C1): with
    it the guest uses MSR_IA32_PMC0 as its base; without it the alias #GPs (KVM
    intel_pmu_is_valid_msr / get_fw_gp_pmc)."""
    v = make_vcpu("intel/icelake", mode, vpmu.GuestPmuConfig(full_width_writes=fw))
    assert bool(v.rdmsr(MSR_IA32_PERF_CAPABILITIES) & PMU_CAP_FW_WRITES) == fw
    assert base_pmc_msr(v) == (MSR_IA32_PMC0 if fw else MSR_IA32_PERFCTR0)
    vec = faults(lambda: v.wrmsr(MSR_IA32_PMC0, 0xFFFF))
    assert vec == (0 if fw else GP_VECTOR)
    assert faults(lambda: v.rdmsr(MSR_IA32_PMC0)) == (0 if fw else GP_VECTOR)


# =========================================================================================
# selftests x86/vmx_pmu_caps_test.c (guest side)
# =========================================================================================
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", SEL_CPUS)
def test_sel_vmx_pmu_caps_guest_wrmsr_gp(cpu: str, mode: str) -> None:
    """guest_wrmsr_perf_capabilities: every guest WRMSR to PERF_CAPABILITIES #GPs (current
    value, 0, each bit flipped) and the guest keeps reading the userspace-set value."""
    v = make_vcpu(cpu, mode, facilities=("lbr",))
    current = v.rdmsr(MSR_IA32_PERF_CAPABILITIES)
    assert current & PMU_CAP_FW_WRITES, "Full-width writes should always be supported"
    for val in (current, 0, *(current ^ (1 << i) for i in range(64))):
        assert faults(v.wrmsr, MSR_IA32_PERF_CAPABILITIES, val) == GP_VECTOR, hex(val)
    assert v.rdmsr(MSR_IA32_PERF_CAPABILITIES) == current


# =========================================================================================
# selftests x86/pmu_event_filter_test.c
# =========================================================================================
NUM_BRANCHES = 42
INTEL_ARCH_BRANCHES_RETIRED = 0x00C4
INTEL_ARCH_INSTRUCTIONS_RETIRED = 0x00C0
AMD_ZEN_BRANCHES_RETIRED = 0x00C2
AMD_ZEN_INSTRUCTIONS_RETIRED = 0x00C0
BASE_EVENTS = (0x003C, 0x00C0, 0x013C, 0x4F2E, 0x412E, 0x00C4, 0x00C5, 0x01A4, AMD_ZEN_BRANCHES_RETIRED)
MAX_TEST_EVENTS = 10
KVM_PMU_EVENT_FILTER_MAX_EVENTS = 300


def raw_event(event_select: int, umask: int) -> int:
    return (event_select & 0xFF) | ((event_select & 0xF00) << 24) | ((umask & 0xFF) << 8)


def masked_entry(event_select: int, mask: int, match: int, exclude: bool) -> int:
    """KVM_PMU_ENCODE_MASKED_ENTRY (uapi asm/kvm.h)"""
    return (
        (event_select & 0xFF)
        | ((event_select & 0xF00) << 24)
        | ((mask & 0xFF) << 56)
        | ((match & 0xFF) << 8)
        | (int(bool(exclude)) << 55)
    )


class FilterGuest:
    """intel_guest_code / amd_guest_code: the sanity check, then each GUEST_SYNC(0) is one
    `run()` of the measured loop."""

    def __init__(self, cpu: str, mode: str, pmu: vpmu.GuestPmuConfig | None = None) -> None:
        self.v = make_vcpu_or_skip(cpu, mode, pmu)
        self.vm = self.v.vm
        self.intel = cpu.startswith("intel")

    def check_msr(self, msr: int, bits: int) -> None:
        v = self.v
        val = v.rdmsr(msr) ^ bits
        v.wrmsr(msr, val)
        if v.rdmsr(msr) != val:
            raise OSError(errno.EIO, f"{msr:#x}")
        val ^= bits
        v.wrmsr(msr, val)
        if v.rdmsr(msr) != val:
            raise OSError(errno.EIO, f"{msr:#x}")

    def sanity_check_pmu(self) -> bool:
        try:
            if self.intel:
                self.check_msr(MSR_CORE_PERF_GLOBAL_CTRL, 1)
                self.check_msr(MSR_P6_EVNTSEL0, 0xFFFF)
                self.check_msr(MSR_IA32_PMC0, 0xFFFF)
            else:
                self.check_msr(MSR_K7_EVNTSEL0, 0xFFFF)
                self.check_msr(MSR_K7_PERFCTR0, 0xFFFF)
        except (vpmu.GuestFault, OSError):
            return False
        return True

    def run(self) -> tuple[int, int]:
        """One loop iteration of the guest: (branches_retired, instructions_retired)."""
        v = self.v
        if self.intel:
            v.wrmsr(MSR_CORE_PERF_GLOBAL_CTRL, 0)
            v.wrmsr(MSR_P6_EVNTSEL0, EVNTSEL_EN | EVNTSEL_OS | INTEL_ARCH_BRANCHES_RETIRED)
            v.wrmsr(MSR_P6_EVNTSEL0 + 1, EVNTSEL_EN | EVNTSEL_OS | INTEL_ARCH_INSTRUCTIONS_RETIRED)
            v.wrmsr(MSR_CORE_PERF_GLOBAL_CTRL, 0x3)
            base = MSR_IA32_PMC0
        else:
            v.wrmsr(MSR_K7_EVNTSEL0, 0)
            v.wrmsr(MSR_K7_EVNTSEL0, EVNTSEL_EN | EVNTSEL_OS | AMD_ZEN_BRANCHES_RETIRED)
            v.wrmsr(MSR_K7_EVNTSEL0 + 1, EVNTSEL_EN | EVNTSEL_OS | AMD_ZEN_INSTRUCTIONS_RETIRED)
            base = MSR_K7_PERFCTR0
        br0 = v.rdmsr(base + 0)
        ir0 = v.rdmsr(base + 1)
        v.execute(vpmu.Work(instructions=NUM_BRANCHES, branches=NUM_BRANCHES))  # loop .
        br = v.rdmsr(base + 0) - br0
        ir = v.rdmsr(base + 1) - ir0
        return br, ir

    def with_filter(self, action: str, events: list[int], fixed: int = 0, masked: bool = False) -> tuple[int, int]:
        self.vm.set_pmu_event_filter(action=action, events=events, fixed_counter_bitmap=fixed, masked=masked)
        return self.run()


def assert_counting(res: tuple[int, int]) -> None:
    br, ir = res
    assert br == NUM_BRANCHES, f"Branch instructions retired = {br} (expected {NUM_BRANCHES})"
    assert ir, "Instructions retired = 0 (expected > 0)"
    # exact: the loop's 42, the first RDMSR of the instructions counter (its value excludes
    # itself) and the RDMSR of the branches counter between the two reads
    assert ir == NUM_BRANCHES + 2, f"exact: instructions retired = {ir}"


def assert_not_counting(res: tuple[int, int]) -> None:
    assert res == (0, 0), f"(branches, instructions) = {res} (expected 0)"


FILTER_CPUS = ("intel/icelake", "intel/skylake", "amd/zen4", "amd/zen2")


def without(events: tuple[int, ...], *drop: int) -> list[int]:
    return [e for e in events if e not in drop]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", FILTER_CPUS)
def test_sel_filter_allow_and_deny_lists(cpu: str, mode: str) -> None:
    """main(): sanity check, (AMD deny list), without filter, member deny/allow, not-member
    deny/allow: counting iff the filter allows the event, exactly 42 branches."""
    g = FilterGuest(cpu, mode)
    assert g.sanity_check_pmu()
    if not g.intel:  # test_amd_deny_list: 0x1C2 is not 0x0C2
        assert_counting(g.with_filter("deny", [raw_event(0x1C2, 0)]))
        g.vm.set_pmu_event_filter(action="deny", events=[])
    assert_counting(g.run())  # test_without_filter
    assert_not_counting(g.with_filter("deny", list(BASE_EVENTS)))  # test_member_deny_list
    assert_counting(g.with_filter("allow", list(BASE_EVENTS)))  # test_member_allow_list
    drop = (INTEL_ARCH_INSTRUCTIONS_RETIRED, INTEL_ARCH_BRANCHES_RETIRED, AMD_ZEN_BRANCHES_RETIRED)
    assert_counting(g.with_filter("deny", without(BASE_EVENTS, *drop)))  # test_not_member_deny_list
    assert_not_counting(g.with_filter("allow", without(BASE_EVENTS, *drop)))  # test_not_member_allow_list


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", FILTER_CPUS)
def test_sel_filter_denied_counter_is_frozen(cpu: str, mode: str) -> None:
    """A denied counter keeps its value (frozen), and counts again once allowed."""
    g = FilterGuest(cpu, mode)
    assert_counting(g.run())
    base = MSR_IA32_PMC0 if g.intel else MSR_K7_PERFCTR0
    before = g.v.rdmsr(base)
    assert before
    g.vm.set_pmu_event_filter(action="deny", events=list(BASE_EVENTS))
    g.v.execute(vpmu.Work(instructions=1000, branches=100))
    assert g.v.rdmsr(base) == before
    assert_counting(g.with_filter("allow", list(BASE_EVENTS)))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", ("intel/icelake", "amd/zen4"))
def test_sel_filter_pmu_config_disable(cpu: str, mode: str) -> None:
    """test_pmu_config_disable: a guest without a vPMU fails the sanity check."""
    g = FilterGuest(cpu, mode, vpmu.GuestPmuConfig(version=0))
    assert not g.sanity_check_pmu()


# masked events. The suite's events (MEM_INST_RETIRED.* / LS_DISPATCH.*) are not in the span
# model; the same masked-entry cases run on events that are: Intel LLC (event 0x2E, umask
# 0x41 misses, 0x4F references) and AMD Zen LLC (0x60/0xFF references, 0x64/0x09 misses).
ALLOW_A, ALLOW_B = 1, 2
INTEL_MASKED_CASES = (
    ([masked_entry(0x2E, 0xFF, 0x41, False)], ALLOW_A, "Only allow misses."),
    ([masked_entry(0x2E, 0xFF, 0x4F, False)], ALLOW_B, "Only allow references."),
    ([masked_entry(0x2E, 0xF0, 0x40, False)], ALLOW_A | ALLOW_B, "Allow both by a partial mask."),
    (
        [masked_entry(0x2E, 0xF0, 0x40, False), masked_entry(0x2E, 0xFF, 0x4F, True)],
        ALLOW_A,
        "Include both, exclude references.",
    ),
    ([masked_entry(0x2E, 0x0E, 0x0E, False)], ALLOW_B, "Only references by umask bits 3:1."),
    (
        [
            masked_entry(0x2E, 0x00, 0x00, False),
            masked_entry(0x2E, 0xFF, 0x41, True),
            masked_entry(0x2E, 0xFF, 0x4F, True),
        ],
        0,
        "Include all, exclude both.",
    ),
)
AMD_MASKED_CASES = (
    ([masked_entry(0x064, 0xFF, 0x09, False)], ALLOW_A, "Only allow misses."),
    ([masked_entry(0x060, 0xFF, 0xFF, False)], ALLOW_B, "Only allow references."),
    (
        [masked_entry(0x064, 0x00, 0x00, False), masked_entry(0x060, 0xF8, 0xF8, False)],
        ALLOW_A | ALLOW_B,
        "Allow both by partial masks.",
    ),
    (
        [masked_entry(0x060, 0x00, 0x00, False), masked_entry(0x060, 0xFF, 0xFF, True)],
        0,
        "Include references, then exclude them.",
    ),
)


def add_dummy_events(n: int, skip: tuple[int, ...]) -> list[int]:
    out = []
    for i in range(n):
        event_select = i % 0xFF
        if event_select in skip:
            event_select += 1
        out.append(masked_entry(event_select, 0, 0, i % 4 == 0))
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", ("intel/icelake", "amd/zen4", "amd/zen2"))
@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_sel_filter_masked_events(dense: bool, cpu: str, mode: str) -> None:
    """test_masked_events: each case, against a sparse filter and against one padded with
    dummy entries to KVM_PMU_EVENT_FILTER_MAX_EVENTS; a counter counts iff allowed."""
    intel = cpu.startswith("intel")
    v = make_vcpu_or_skip(cpu, mode)
    vm = v.vm
    if intel:
        sels = (MSR_P6_EVNTSEL0, MSR_P6_EVNTSEL0 + 1)
        ctrs = (MSR_IA32_PMC0, MSR_IA32_PMC0 + 1)
        events = (0x412E, 0x4F2E)
        cases, skip = INTEL_MASKED_CASES, (0x2E,)
    else:
        sels = (MSR_K7_EVNTSEL0, MSR_K7_EVNTSEL0 + 1)
        ctrs = (MSR_K7_PERFCTR0, MSR_K7_PERFCTR0 + 1)
        events = (raw_event(0x064, 0x09), raw_event(0x060, 0xFF))
        cases, skip = AMD_MASKED_CASES, (0x60, 0x64)
    prefix = add_dummy_events(KVM_PMU_EVENT_FILTER_MAX_EVENTS - MAX_TEST_EVENTS, skip) if dense else []
    for entries, flags, msg in cases:
        vm.set_pmu_event_filter(action="allow", events=prefix + entries, masked=True)
        if intel:
            v.wrmsr(MSR_CORE_PERF_GLOBAL_CTRL, 0)
        for sel, ev in zip(sels, events):
            v.wrmsr(sel, 0)
            v.wrmsr(sel, EVNTSEL_EN | EVNTSEL_OS | ev)
        if intel:
            v.wrmsr(MSR_CORE_PERF_GLOBAL_CTRL, 0x3)
        start = [v.rdmsr(c) for c in ctrs]
        v.execute(vpmu.Work(instructions=3, llc_references=2, llc_misses=1))
        got = [v.rdmsr(c) - s for c, s in zip(ctrs, start)]
        assert (bool(got[0]), bool(got[1])) == (bool(flags & ALLOW_A), bool(flags & ALLOW_B)), (msg, got)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", ("intel/icelake", "amd/zen4"))
def test_sel_filter_ioctl(cpu: str, mode: str) -> None:
    """test_filter_ioctl: invalid bits in a plain event are accepted, in a masked entry
    EINVAL; a valid masked entry is accepted; an invalid action and too many events fail;
    masking non-existent fixed counters is allowed."""
    v = make_vcpu(cpu, mode)
    vm = v.vm
    vm.set_pmu_event_filter(action="allow", events=[u64(~0)])
    with pytest.raises(vpmu.PerfError) as e:
        vm.set_pmu_event_filter(action="allow", events=[u64(~0)], masked=True)
    assert e.value.errno == errno.EINVAL
    vm.set_pmu_event_filter(action="allow", events=[masked_entry(0xFF, 0xFF, 0xFF, True)], masked=True)
    with pytest.raises((vpmu.PerfError, ValueError)):
        vm.set_pmu_event_filter(action="bogus", events=list(BASE_EVENTS))  # type: ignore[arg-type]
    with pytest.raises(vpmu.PerfError) as e:
        vm.set_pmu_event_filter(action="allow", events=[0x00C0] * (KVM_PMU_EVENT_FILTER_MAX_EVENTS + 1))
    assert e.value.errno == errno.E2BIG
    nr_fixed = this_cpu_property_pmu(v)["nr_fixed"]
    vm.set_pmu_event_filter(
        action="allow", events=list(BASE_EVENTS), fixed_counter_bitmap=~((1 << (nr_fixed + 1)) - 1) & 0xFFFFFFFF
    )


def fixed_counter_guest(v: Any, idx: int) -> int:
    """intel_run_fixed_counter_guest_code: one GUEST_SYNC(count)."""
    v.wrmsr(MSR_CORE_PERF_GLOBAL_CTRL, 0)
    v.wrmsr(MSR_CORE_PERF_FIXED_CTR0 + idx, 0)
    v.wrmsr(MSR_CORE_PERF_FIXED_CTR_CTRL, 0x1 << (4 * idx))
    v.wrmsr(MSR_CORE_PERF_GLOBAL_CTRL, 1 << (32 + idx))
    v.execute(vpmu.Work(instructions=NUM_BRANCHES, branches=NUM_BRANCHES, topdown_slots=4 * NUM_BRANCHES))
    v.wrmsr(MSR_CORE_PERF_GLOBAL_CTRL, 0)
    return v.rdmsr(MSR_CORE_PERF_FIXED_CTR0 + idx)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", SEL_CPUS)
def test_sel_filter_fixed_counter_bitmap(cpu: str, mode: str) -> None:
    """test_fixed_counter_bitmap: a fixed counter counts iff the bitmap allows it, and the
    bitmap wins over events[] when both are set."""
    _, _, nr_fixed, _ = host_facts(cpu)
    for idx in range(nr_fixed):
        v = make_vcpu(cpu, mode)
        vm = v.vm
        assert fixed_counter_guest(v, idx)
        for i in range(1 << nr_fixed):
            bitmap = 1 << i
            for action, events in (
                ("allow", []),
                ("deny", []),
                ("allow", list(BASE_EVENTS)),
                ("deny", list(BASE_EVENTS)),
            ):
                vm.set_pmu_event_filter(action=action, events=events, fixed_counter_bitmap=bitmap)
                count = fixed_counter_guest(v, idx)
                allowed = bool(bitmap & (1 << idx)) == (action == "allow")
                assert bool(count) == allowed, (idx, bitmap, action, len(events), count)
                if allowed and idx == 0:
                    assert count == NUM_BRANCHES + 1  # exact: the loop and the disabling WRMSR
