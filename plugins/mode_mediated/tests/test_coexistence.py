"""Host perf coexistence: the NMI watchdog and other exclude_guest=0 events (RFC v2+ rules,
and RFC v1's ERROR state as an option), and the timeguest clock of exclude_guest events."""

from __future__ import annotations

import errno

import pytest
from vpmu_core import EventState, PerfError, PerfEventAttr, Work

#: the NMI watchdog: a per-CPU pinned cycles event that does not exclude the guest
WATCHDOG = PerfEventAttr(config="cycles", pinned=True)


@pytest.mark.parametrize("cpu", ["intel/icelake", "amd/zen4"])
def test_nmi_watchdog_blocks_vm_creation_then_cannot_open(cpu, host_factory) -> None:
    host = host_factory(cpu)
    wd = host.perf_event_open(WATCHDOG, pid=-1, cpu=0)
    with pytest.raises(PerfError) as e:
        host.create_vm(vcpus=1, pin=[0])
    assert e.value.errno == errno.EBUSY
    assert "nmi_watchdog" in str(e.value)
    assert host.vms == []
    wd.close()
    vm = host.create_vm(vcpus=1, pin=[0])
    with pytest.raises(PerfError) as e2:
        host.perf_event_open(WATCHDOG, pid=-1, cpu=1)
    assert e2.value.errno == errno.EOPNOTSUPP
    # exclude_guest events are fine while a mediated VM exists
    ok = host.perf_event_open(PerfEventAttr(config="cycles", pinned=True, exclude_guest=True), pid=-1, cpu=1)
    assert ok.state == EventState.ACTIVE
    vm.destroy()
    host.perf_event_open(WATCHDOG, pid=-1, cpu=1)  # the last mediated VM is gone
    assert host.report()["mode"]["refused_perf_opens"] == 1


def test_disabled_include_guest_event_still_blocks(host_factory) -> None:
    """perf accounts !exclude_guest events at creation, whatever their state."""
    host = host_factory("intel/icelake")
    host.perf_event_open(PerfEventAttr(config="instructions", disabled=True), pid=-1, cpu=1)
    with pytest.raises(PerfError) as e:
        host.create_vm(vcpus=1, pin=[0])
    assert e.value.errno == errno.EBUSY


def test_rfc1_policy_errors_include_guest_events_forever(host_factory) -> None:
    host = host_factory("intel/icelake", host_policy="rfc1")
    wd = host.perf_event_open(WATCHDOG, pid=-1, cpu=0)
    vm = host.create_vm(vcpus=1, pin=[0])  # RFC v1 does not refuse
    late = host.perf_event_open(WATCHDOG, pid=-1, cpu=0)  # nor later opens
    vm.vcpus[0].execute(Work(instructions=1_000_000))
    assert wd.state == EventState.ERROR and late.state == EventState.ERROR
    vm.destroy()
    host.advance(ns=1_000_000)
    assert wd.state == EventState.ERROR  # never recovers


@pytest.mark.parametrize("switch_at", ["run_loop", "exit", "vcpu_run"])
def test_exclude_guest_events_stop_during_guest_time_and_resume(switch_at, host_factory, exits) -> None:
    host = host_factory("intel/icelake", switch_at=switch_at)
    ev = host.perf_event_open(PerfEventAttr(config="cycles", pinned=True, exclude_guest=True), pid=-1, cpu=0)
    vm = host.create_vm(vcpus=1, pin=[0], exits=exits(rate=20_000))
    v = vm.vcpus[0]
    t0 = host.cpus[0].now_ns()
    guest_cycles = 30_000_000
    v.execute(Work(instructions=guest_cycles))
    during = ev.read()
    elapsed = host.cpus[0].now_ns() - t0
    guest_ns = guest_cycles * 1_000_000_000 // host.freq_hz
    # the timeguest clock: enabled/running time excludes the loaded guest time
    assert during.time_enabled <= elapsed - guest_ns
    assert during.time_enabled == during.time_running
    assert ev.state == EventState.INACTIVE  # scheduled out: the guest context is loaded
    # host cycles the event saw are only the host-mode ones (exit handling outside the loaded window)
    assert during.value < elapsed * host.freq_hz // 1_000_000_000 - guest_cycles + 1
    vm.destroy()
    task = host.spawn_task("host", cpu=0)
    task.execute(Work(instructions=3_000_000))
    host.advance(ns=2_000_000)  # 6M cycles: the 3M-cycle task runs, then the CPU idles
    after = ev.read()
    assert ev.state == EventState.ACTIVE
    assert after.value - during.value >= 3_000_000
    assert after.time_enabled - during.time_enabled >= 2_000_000
