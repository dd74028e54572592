"""KVM selftests `x86/pmu_counters_test.c` (test_arch_events, test_gp_counters,
test_fixed_counters), replayed through the public API (DESIGN §5; the guest side is
tests/peer/guest.py) -> `test_sel_counters_*`."""

from __future__ import annotations

from typing import Any

import pytest

import vpmu_core as vpmu
from tests.peer.guest import (
    EVNTSEL_EN,
    EVNTSEL_OS,
    GP_VECTOR,
    INTEL_RDPMC_FAST,
    INTEL_RDPMC_FIXED,
    MODES,
    MSR_CORE_PERF_FIXED_CTR0,
    MSR_CORE_PERF_FIXED_CTR_CTRL,
    MSR_CORE_PERF_GLOBAL_CTRL,
    MSR_IA32_PERF_CAPABILITIES,
    MSR_IA32_PERFCTR0,
    MSR_IA32_PMC0,
    MSR_P6_EVNTSEL0,
    PMU_CAP_FW_WRITES,
    SEL_CPUS,
    faults,
    host_facts,
    make_vcpu,
    this_cpu_property_pmu,
    u64,
)

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
