"""DESIGN §9 invariants as properties, across vendors and modes (needs the real plugins):

* a counter never sees what its filters exclude (USR/OS by CPL, host vs guest mode);
* a guest never reads a host value;
* with no contention, guest counts equal ground truth, whatever the exit mix.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vpmu_core as vpmu

pytest.importorskip("vpmu_intel_arch")
pytest.importorskip("vpmu_amd_perfmon")
pytest.importorskip("vpmu_mode_emulated")
pytest.importorskip("vpmu_mode_mediated")

# vendor -> (selector MSR of counter 0, counter MSR, global control MSR, USR, OS, EN)
REGS = {
    "intel/icelake": (0x186, 0xC1, 0x38F),
    "amd/zen4": (0xC0010200, 0xC0010201, 0xC0000301),
}
USR, OS, EN = 1 << 16, 1 << 17, 1 << 22
INSTRUCTIONS = {"intel/icelake": 0xC0, "amd/zen4": 0xC0}
BRANCHES = {"intel/icelake": 0xC4, "amd/zen4": 0xC2}
COMBOS = [(cpu, mode) for cpu in REGS for mode in ("emulated", "mediated")]

spans = st.lists(
    st.tuples(st.integers(1, 3_000_000), st.integers(0, 300_000), st.sampled_from([0, 3])), min_size=1, max_size=6
)
exit_mix = st.tuples(st.sampled_from([0, 5_000, 50_000]), st.sampled_from([0.0, 0.5, 0.9]))


def guest(cpu: str, mode: str, rate: int = 0, fast: float = 0.0, pin: int = 0):
    host = vpmu.compose(cpu=cpu, mode=mode)
    vm = host.create_vm(vcpus=1, pin=[pin], exits=vpmu.ExitProfile(rate_per_s=rate, fastpath_share=fast))
    return host, vm.vcpus[0]


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(COMBOS), spans, st.sampled_from([USR, OS, USR | OS]), exit_mix)
def test_guest_counts_equal_filtered_truth(combo, work, ring, mix):
    cpu, mode = combo
    sel, ctr, gctl = REGS[cpu]
    host, v = guest(cpu, mode, *mix)
    v.wrmsr(gctl, 0)
    v.wrmsr(ctr, 0)
    v.wrmsr(sel, BRANCHES[cpu] | ring | EN)
    v.wrmsr(gctl, 1)
    for instr, br, cpl in work:
        v.execute(vpmu.Work(instructions=instr, branches=br, cpl=cpl))
    v.wrmsr(gctl, 0)
    want = sum(br for _, br, cpl in work if (cpl == 0 and ring & OS) or (cpl != 0 and ring & USR))
    assert v.rdmsr(ctr) == want  # WRMSR/RDMSR are not branches


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(COMBOS), spans, exit_mix)
def test_host_exclude_guest_event_never_counts_guest_work(combo, work, mix):
    cpu, mode = combo
    host, v = guest(cpu, mode, *mix)
    ev = host.perf_event_open(vpmu.PerfEventAttr(config="branches", exclude_guest=True, pinned=True), pid=-1, cpu=0)
    t = host.spawn_task("host-work", cpu=0)
    t.execute(vpmu.Work(instructions=2_000_000, branches=123_457))
    for instr, br, cpl in work:
        v.execute(vpmu.Work(instructions=instr, branches=br, cpl=cpl))
    host.advance(ns=2_000_000)
    # the host task's branches, none of the guest's (KVM's own exit handling has no branches)
    assert ev.read().value == 123_457


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(COMBOS), spans)
def test_guest_never_reads_a_host_value(combo, work):
    cpu, mode = combo
    sel, ctr, gctl = REGS[cpu]
    host, v = guest(cpu, mode)
    # host perf owns and fills every physical counter of the vCPU's CPU (exclude_guest, so the
    # mediated vPMU admits them); the guest never programs its counters
    for _ in range(12):
        host.perf_event_open(vpmu.PerfEventAttr(config="instructions", exclude_guest=True), pid=-1, cpu=0)
    t = host.spawn_task("host-work", cpu=0)
    t.execute(vpmu.Work(instructions=5_000_000, branches=100_000))
    host.advance(ns=1_000_000)
    for instr, br, cpl in work:
        v.execute(vpmu.Work(instructions=instr, branches=br, cpl=cpl))
    host.advance(ns=2_000_000)
    pmu = v.pmu
    for p in pmu.pmcs:
        for msr in pmu.counter_msrs(p):
            assert v.rdmsr(msr) == 0, f"{cpu}/{mode}: guest counter MSR {msr:#x} shows a host value"
        assert v.rdpmc(pmu.rdpmc_ecx(p)) == 0
