"""Xen's vPMU policy, through the public API: lazy load, save at schedule-out only, Xen's
guest limits, the host-perf choice and what it costs the host."""

from __future__ import annotations

from typing import Any

import pytest

import vpmu_core as vpmu
from vpmu_core.api import GuestFault

INTEL, AMD = "intel/icelake", "amd/zen4"


def compose(cpu: str = INTEL, **options: Any) -> Any:
    return vpmu.compose(cpu=cpu, mode="xen_lazy", mode_options=options, cpus=1)


def counting_guest(host: Any, rate: int = 100_000) -> tuple[Any, Any, Any]:
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=rate, fastpath_share=0.5))
    ev = vm.guest_perf.perf_event_open(vpmu.PerfEventAttr(config="instructions", pinned=True), cpu=0)
    return vm, vm.vcpus[0], ev


def vcpu_stats(host: Any, v: Any) -> dict[str, int]:
    return host.report()["mode"]["vcpus"][v.name]


def test_listed_and_composable() -> None:
    cat = vpmu.catalog()
    rec = cat.plugin("mode_xen_lazy")
    assert rec is not None and rec.status == "loaded" and rec.dist == "vpmu-mode-xen-lazy"
    assert "xen_lazy" in cat.modes and set(cat.modes["xen_lazy"].options) == {"lazy", "emulated_instructions"}


@pytest.mark.parametrize("cpu", [INTEL, AMD])
def test_context_never_switched_at_vm_exit(cpu: str) -> None:
    """Thousands of exits, one schedule-in: one load, no save until schedule-out."""
    host = compose(cpu)
    _, v, ev = counting_guest(host)
    v.execute(vpmu.Work(instructions=20_000_000, branches=1_000_000))
    assert v.stats.total_exits > 500
    st = vcpu_stats(host, v)
    assert (st["loads"], st["saves"]) == (1, 0)
    host.spawn_task("other", cpu=0).execute(vpmu.Work(instructions=1_000_000))
    host.advance(ns=5_000_000)
    assert vcpu_stats(host, v)["saves"] == 1, "saved at schedule-out"


def test_idle_context_loads_lazily_at_first_access() -> None:
    host = compose()
    vm = host.create_vm(vcpus=1, pin=[0])
    v = vm.vcpus[0]
    v.execute(vpmu.Work(instructions=1_000_000))
    assert vcpu_stats(host, v)["loads"] == 0, "a guest that never touched its PMU has no context loaded"
    ctr = v.pmu.counter_msrs(v.pmu.gp[0])[0]
    v.wrmsr(ctr, 5)  # first PMU access
    st = vcpu_stats(host, v)
    assert (st["loads"], st["lazy_loads"]) == (1, 1)
    assert host.cpus[0].pmu.pmc(0).value == 5, "the guest's value is in hardware"


def test_counting_context_loads_at_schedule_in_idle_one_does_not() -> None:
    host = compose()
    vm, v, ev = counting_guest(host, rate=0)
    task = host.spawn_task("other", cpu=0)
    v.queue(vpmu.Work(instructions=30_000_000))
    task.execute(vpmu.Work(instructions=30_000_000))
    host.advance(ns=40_000_000)
    st = vcpu_stats(host, v)
    # the first load is the guest driver's first PMU access; every later one is at schedule-in
    assert st["loads"] > 2 and st["lazy_loads"] == 1, st
    ev.disable()  # the context stops counting: the next schedule-in leaves it saved
    loads = vcpu_stats(host, v)["loads"]
    v.queue(vpmu.Work(instructions=30_000_000))
    task.execute(vpmu.Work(instructions=30_000_000))
    host.advance(ns=40_000_000)
    assert vcpu_stats(host, v)["loads"] == loads


def test_xen_guest_limits_intel() -> None:
    host = compose(INTEL)
    v = host.create_vm(vcpus=1, pin=[0], pmu=vpmu.GuestPmuConfig(version=5, fixed_counters=4)).vcpus[0]
    assert v.pmu.version <= 3
    assert len(v.pmu.fixed) <= 3
    eax, _, _, edx = v.cpuid(0xA, 0)
    assert eax & 0xFF <= 3 and edx & 0x1F <= 3


def test_xen_guest_limits_amd_no_perfmon_v2() -> None:
    host = compose(AMD)
    v = host.create_vm(vcpus=1, pin=[0]).vcpus[0]
    assert v.pmu.version == 1
    with pytest.raises(GuestFault):
        v.wrmsr(0xC000_0301, 1)  # PerfCntrGlobalCtl: PerfMonV2 only


def _host_watchdog_run(lazy: bool, guest_counts: bool) -> tuple[Any, Any]:
    host = compose(lazy=lazy)
    wd = host.perf_event_open(vpmu.PerfEventAttr(config="cycles", pinned=True), pid=-1, cpu=0)
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=50_000, fastpath_share=0.5))
    if guest_counts:
        vm.guest_perf.perf_event_open(vpmu.PerfEventAttr(config="instructions", pinned=True), cpu=0)
    vm.vcpus[0].execute(vpmu.Work(instructions=20_000_000))
    return host, wd


def test_host_perf_is_blind_while_a_guest_context_is_loaded() -> None:
    """The host-perf choice, measured: a host per-CPU event that counts everything (an NMI
    watchdog) loses what runs while a guest context is loaded, hypervisor work included
    (its enabled time stops too: perf's guest-context clock); with the lazy load an idle
    guest PMU costs the host nothing, with an eager load it costs the whole vCPU time."""

    def lost(host: Any, wd: Any) -> int:
        return int(host.perf.truth_of(wd) - wd.read().value)

    host, wd = _host_watchdog_run(lazy=True, guest_counts=True)
    assert lost(host, wd) > host.perf.truth_of(wd) // 2
    assert host.report()["mode"]["blind_window_ns"] > 0
    host, wd = _host_watchdog_run(lazy=True, guest_counts=False)
    assert lost(host, wd) == 0 and host.report()["mode"]["blind_window_ns"] == 0
    host, wd = _host_watchdog_run(lazy=False, guest_counts=False)
    assert lost(host, wd) > host.perf.truth_of(wd) // 2


def test_xen_does_not_count_emulated_instructions_when_asked() -> None:
    for option, extra in (("count", 50), ("xen", 0)):
        host = compose(emulated_instructions=option)
        vm, v, ev = counting_guest(host, rate=0)
        before = ev.read().value
        for _ in range(50):
            v.cpuid(0, 0)
        # the read itself is one more emulated RDMSR (or passthrough-free RDPMC) counted by "count"
        got = ev.read().value - before
        assert got in (extra, extra + 1), (option, got)


def test_options_are_validated() -> None:
    with pytest.raises(vpmu.ConfigError):
        compose(lazy="maybe")
    with pytest.raises(vpmu.ConfigError):
        compose(emulated_instructions="sometimes")
    with pytest.raises(vpmu.ConfigError):
        compose(bogus=1)
