"""Engine and hypervisor: counting window, truth vs counts, overflow point, determinism."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vpmu_core as vpmu
from vpmu_core.events import N_KINDS, WorkCursor
from vpmu_core.hv.lapic import LVT_MASKED, X2APIC_LVTPC
from vpmu_core.hw.pmc import events_until_overflow, sign_extend
from vpmu_core.testing.toy import CTR, EN, EVTSEL, GCTRL, GSTATUS, GSTATUS_CLR, INT, OS, USR


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 10**9), min_size=N_KINDS - 1, max_size=N_KINDS - 1),
    st.lists(st.integers(1, 10**7), min_size=1, max_size=30),
)
def test_work_slices_add_up_exactly(counts, steps):
    w = vpmu.Work(
        cycles=counts[0] + 1,
        instructions=counts[1],
        ref_cycles=counts[2],
        llc_references=counts[3],
        llc_misses=counts[4],
        branches=counts[5],
        branch_misses=counts[6],
        topdown_slots=counts[7],
    )
    cur = WorkCursor(w)
    total = [0] * N_KINDS
    for s in steps * 1000:
        if cur.finished:
            break
        for i, c in enumerate(cur.take(s)):
            assert c >= 0
            total[i] += c
    while not cur.finished:
        for i, c in enumerate(cur.take(10**12)):
            total[i] += c
    assert tuple(total) == w.counts


def test_sign_extend_and_overflow_arithmetic():
    assert sign_extend(0xFFFFFFFF, 32, 48) == (1 << 48) - 1
    assert sign_extend(0x7FFFFFFF, 32, 48) == 0x7FFFFFFF
    assert events_until_overflow((1 << 48) - 5, (1 << 48) - 1) == 5


def program(v, idx, event, extra=0):
    v.wrmsr(EVTSEL + idx, event | USR | OS | EN | extra)


def test_counting_window_of_wrmsr(host):
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=20_000))
    v = vm.vcpus[0]
    v.wrmsr(GCTRL, 0)
    program(v, 0, int(vpmu.EventKind.INSTRUCTIONS))
    program(v, 1, int(vpmu.EventKind.BRANCHES))
    v.wrmsr(GCTRL, 0b11)
    n, b = 3_333_333, 44_444
    v.execute(vpmu.Work(instructions=n, branches=b, cycles=2 * n))
    v.wrmsr(GCTRL, 0)
    assert v.stats.total_exits > 20
    assert v.rdmsr(CTR + 0) == n + 1
    assert v.rdmsr(CTR + 1) == b


def test_guest_truth_equals_counts_without_contention(host):
    vm = host.create_vm(vcpus=1, pin=[1])
    v = vm.vcpus[0]
    program(v, 0, int(vpmu.EventKind.CYCLES))
    before = host.truth.total(v.name, vpmu.EventKind.CYCLES, guest=True)
    v.execute(vpmu.Work(instructions=10**6, cycles=4 * 10**6, cpl=3))
    after = host.truth.total(v.name, vpmu.EventKind.CYCLES, guest=True)
    assert v.rdmsr(CTR) == after - before  # the RDMSR's own cycle retires after the read


def test_exact_overflow_point_raises_one_pmi(host):
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=0))
    v = vm.vcpus[0]
    v.wrmsr(X2APIC_LVTPC, 0xF0)  # vector 0xF0, unmasked
    v.wrmsr(GCTRL, 0)
    v.wrmsr(CTR, (1 << 48) - 999)
    program(v, 0, int(vpmu.EventKind.INSTRUCTIONS), INT)
    v.wrmsr(GCTRL, 1)
    v.execute(vpmu.Work(instructions=1000))
    v.wrmsr(GCTRL, 0)
    assert v.rdmsr(CTR) == 2  # 999 to wrap, then 1 + the disabling WRMSR
    assert v.rdmsr(GSTATUS) & 1
    assert len(v.pmis) == 1 and v.pmis[0].vector == 0xF0
    assert v.lapic.value & LVT_MASKED
    v.wrmsr(GSTATUS_CLR, 1)
    assert v.rdmsr(GSTATUS) == 0


def test_no_pmi_without_int(host):
    v = host.create_vm(vcpus=1, pin=[0]).vcpus[0]
    v.wrmsr(X2APIC_LVTPC, 0xF0)
    v.wrmsr(CTR, (1 << 48) - 10)
    program(v, 0, int(vpmu.EventKind.INSTRUCTIONS))
    v.execute(vpmu.Work(instructions=100))
    assert v.rdmsr(GSTATUS) & 1 and v.pmis == []


def test_lvtpc_masked_at_reset_drops_pmi(host):
    v = host.create_vm(vcpus=1, pin=[0]).vcpus[0]
    v.wrmsr(CTR, (1 << 48) - 10)
    program(v, 0, int(vpmu.EventKind.INSTRUCTIONS), INT)
    v.execute(vpmu.Work(instructions=100))
    assert v.pmis == []


def test_bad_guest_input_is_gp_not_exception(host):
    v = host.create_vm(vcpus=1).vcpus[0]
    for bad in (
        lambda: v.wrmsr(EVTSEL, 1 << 40),
        lambda: v.wrmsr(0x1234, 0),
        lambda: v.rdmsr(0x1234),
        lambda: v.wrmsr(GSTATUS, 1),
        lambda: v.rdpmc(7),
        lambda: v.wrmsr(X2APIC_LVTPC, 1 << 20),
    ):
        with pytest.raises(vpmu.GuestFault) as e:
            bad()
        assert e.value.vector == 13
    v.cpl = 3
    with pytest.raises(vpmu.GuestFault):
        v.wrmsr(GCTRL, 0)
    with pytest.raises(vpmu.GuestFault):
        v.rdpmc(0)
    v.cr4_pce = True
    assert v.rdpmc(0) == 0


def test_vcpu_preemption_and_host_task_share_cpu(host):
    t = host.spawn_task("noisy", cpu=0)
    t.execute(vpmu.Work(instructions=30_000_000))
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=0))
    v = vm.vcpus[0]
    v.execute(vpmu.Work(instructions=30_000_000))
    assert v.stats.exits["external_interrupt"] >= 3
    assert not t.runnable or host.truth.total(t.owner, vpmu.EventKind.INSTRUCTIONS) > 0


def test_exits_charge_cost_model_and_host_work(host):
    v = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=100_000, fastpath_share=0.5)).vcpus[0]
    v.execute(vpmu.Work(instructions=30_000_000))
    oh = v.stats.overhead_cycles
    fast, slow = v.stats.fastpath_exits, v.stats.total_exits - v.stats.fastpath_exits
    assert oh["vmexit_fastpath"] == fast * host.costs.vmexit_fastpath
    assert oh["vmexit"] == slow * host.costs.vmexit_full_simple
    host_cycles = host.truth.total(v.name, vpmu.EventKind.CYCLES, guest=False)
    assert host_cycles == sum(oh.values())


def run_script(seed):
    import vpmu_core.testing.toy as toy

    host = vpmu.compose(cpu="toy/basic", mode="reference", plugins=[("toy", toy)], seed=seed)
    host.perf_event_open(vpmu.PerfEventAttr(config="instructions"), pid=-1, cpu=0)
    vm = host.create_vm(vcpus=2)
    for v in vm.vcpus:
        v.queue(vpmu.Work(instructions=7_000_000, branches=10_000))
    host.advance(ns=5_000_000)
    return json.dumps(host.report(), sort_keys=True), json.dumps(host.truth.snapshot())


def test_same_seed_same_ledger_and_report():
    assert run_script(3) == run_script(3)
    assert run_script(3) != run_script(4)


def test_event_filter_ioctl_errors(host):
    import errno

    vm = host.create_vm(vcpus=1)
    with pytest.raises(vpmu.PerfError) as e:
        vm.set_pmu_event_filter(action="allow", events=list(range(301)))
    assert e.value.errno == errno.E2BIG
    with pytest.raises(vpmu.PerfError) as e:
        vm.set_pmu_event_filter(action="maybe", events=[0xC0])
    assert e.value.errno == errno.EINVAL
    with pytest.raises(vpmu.PerfError) as e:
        vm.set_pmu_event_filter(action="allow", events=[1 << 40], masked=True)
    assert e.value.errno == errno.EINVAL


def test_xrstors_of_garbage_is_gp_not_an_exception(host):
    v = host.create_vm(vcpus=1).vcpus[0]
    with pytest.raises(vpmu.GuestFault):
        v.xrstors(b"junk", 1 << 15)
    area = v.xsaves(1 << 15)
    v.xrstors(area, 1 << 15)  # an area the vCPU saved restores fine
