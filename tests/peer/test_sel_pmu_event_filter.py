"""KVM selftests `x86/pmu_event_filter_test.c`, replayed through the public API (DESIGN §5;
the guest side is tests/peer/guest.py) -> `test_sel_filter_*`."""

from __future__ import annotations

import errno
from typing import Any

import pytest

import vpmu_core as vpmu
from tests.peer.guest import (
    EVNTSEL_EN,
    EVNTSEL_OS,
    MODES,
    MSR_CORE_PERF_FIXED_CTR0,
    MSR_CORE_PERF_FIXED_CTR_CTRL,
    MSR_CORE_PERF_GLOBAL_CTRL,
    MSR_IA32_PMC0,
    MSR_K7_EVNTSEL0,
    MSR_K7_PERFCTR0,
    MSR_P6_EVNTSEL0,
    SEL_CPUS,
    host_facts,
    make_vcpu,
    make_vcpu_or_skip,
    this_cpu_property_pmu,
    u64,
)

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
