"""Guest configurations other than "same as the host", preemption, migration, and a
property test: whatever the guest does with its counters and whatever exits happen, it
reads its own values and no switch leaks."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vpmu_core import ExitProfile, GuestFault, GuestPmuConfig, PerfEventAttr, Work


def test_amd_v1_guest_counts_without_global_control(host_factory, guest_driver) -> None:
    host = host_factory("amd/zen4")
    v = host.create_vm(vcpus=1, pin=[0], pmu=GuestPmuConfig(version=1)).vcpus[0]
    assert "ctrl" not in v.pmu.global_msrs()
    d = guest_driver(v, "amd")
    d.program(0, "instructions")
    v.execute(Work(instructions=2_000_000))
    v.wrmsr(d.sel_msr(0), 0)
    assert d.read(0) == 2_000_001  # N + the disabling WRMSR (counted under the old state)
    assert host.leaks.leaks == []


def test_intel_guest_without_full_width_writes(host_factory, guest_driver) -> None:
    host = host_factory("intel/icelake")
    v = host.create_vm(vcpus=1, pin=[0], pmu=GuestPmuConfig(full_width_writes=False)).vcpus[0]
    with pytest.raises(GuestFault):
        v.wrmsr(0x4C1, 5)  # IA32_A_PMC0 does not exist for this guest
    v.wrmsr(0xC1, 0xFFFF_FFFF)  # legacy write: sign-extended by the hardware it reaches
    assert v.rdmsr(0xC1) == v.pmu.gp[0].mask
    assert v.stats.exits["msr_write"] == 1  # only the #GP one: the legacy counter is passed through


@pytest.mark.parametrize("switch_at", ["run_loop", "exit", "vcpu_run"])
def test_preemption_by_a_host_task_switches_and_keeps_counts(switch_at, host_factory, guest_driver) -> None:
    host = host_factory("intel/icelake", cpus=1, switch_at=switch_at)
    ev = host.perf_event_open(PerfEventAttr(config="instructions", exclude_guest=True, pinned=True), pid=-1, cpu=0)
    task = host.spawn_task("noisy", cpu=0)
    v = host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=5_000)).vcpus[0]
    d = guest_driver(v, "intel")
    d.global_ctrl(0)
    d.program(0, "instructions")
    d.global_ctrl(1)
    task.execute(Work(instructions=20_000_000))
    v.queue(Work(instructions=20_000_000))
    host.advance(ns=20_000_000)
    d.global_ctrl(0)
    assert d.read(0) == 20_000_001
    assert host.leaks.checks > 2 and host.leaks.leaks == []
    assert ev.read().value >= 20_000_000


def test_migration_keeps_live_counter_values(host_factory, guest_driver) -> None:
    host = host_factory("amd/zen4")
    vm = host.create_vm(vcpus=1, pin=[0])
    v = vm.vcpus[0]
    d = guest_driver(v, "amd")
    d.global_ctrl(0)
    d.program(0, "instructions")
    d.global_ctrl(1)
    v.execute(Work(instructions=1_000_000))
    state = v.save_state()  # taken while the context is loaded: pulled from hardware
    dst_vm = host.create_vm(vcpus=1, pin=[1])
    dst = dst_vm.vcpus[0]
    dst.execute(Work(instructions=10))  # load the destination's context
    dst.restore_state(state)
    assert guest_driver(dst, "amd").read(0) == 1_000_000 == v.rdmsr(d.ctr_msr(0))
    assert host.leaks.leaks == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    switch_at=st.sampled_from(["run_loop", "exit", "vcpu_run"]),
    cpu=st.sampled_from(["intel/icelake", "amd/zen4"]),
    ops=st.lists(
        st.tuples(st.sampled_from(["write", "run", "cpuid"]), st.integers(0, 3), st.integers(0, (1 << 40) - 1)),
        min_size=1,
        max_size=12,
    ),
)
def test_guest_reads_its_own_values_property(switch_at, cpu, ops, host_factory, guest_driver) -> None:
    host = host_factory(cpu, switch_at=switch_at)
    v = host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=200_000, fastpath_share=0.5)).vcpus[0]
    d = guest_driver(v, cpu.split("/")[0])
    d.global_ctrl(0)  # nothing counts: values change only by the guest's writes
    expect = {i: 0 for i in range(4)}
    for op, i, value in ops:
        if op == "write":
            d.vcpu.wrmsr(d.ctr_msr(i), value)
            expect[i] = value
        elif op == "run":
            v.execute(Work(instructions=50_000))
        else:
            v.cpuid(0)
    for i, value in expect.items():
        assert d.read(i) == value
    assert host.leaks.leaks == []
