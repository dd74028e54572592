"""VM lifecycle (issue 16): what `vm.destroy()` releases in each mode, what happens to calls
on a destroyed VM, and a leak check after destroy (kvm_pmu_destroy / kvm_arch_destroy_vm /
perf_release_mediated_pmu). Cross-plugin: needs the real vendor and mode plugins."""

from __future__ import annotations

import errno
from typing import Any

import pytest

import vpmu_core as vpmu
from vpmu_core import EventState, PerfEventAttr, Work

pytest.importorskip("vpmu_intel_arch")
pytest.importorskip("vpmu_amd_perfmon")
emulated_mode = pytest.importorskip("vpmu_mode_emulated.mode")
mediated_switch = pytest.importorskip("vpmu_mode_mediated.switch")

USR, OS, EN = 1 << 16, 1 << 17, 1 << 22
BRANCHES = {"intel": 0xC4, "amd": 0xC2}
CPUS = ("intel/icelake", "amd/zen4")
MODES = ("emulated", "mediated")
#: distinctive guest counter values: any of them in a host counter is a leak
PLANT = 0x5A5A_0000_0000
NO_EXITS = vpmu.ExitProfile(rate_per_s=0)
WATCHDOG = PerfEventAttr(config="cycles", pinned=True)  # exclude_guest=0


def make(cpu: str, mode: str, **kw: Any) -> tuple[Any, Any, Any]:
    host = vpmu.compose(cpu=cpu, mode=mode, cpus=2, **kw)
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=20_000, fastpath_share=0.5))
    return host, vm, vm.vcpus[0]


def program_all(v: Any) -> int:
    """Every GP counter counts branches from a planted value; returns how many."""
    pmu = v.pmu
    ctrl = pmu.global_msrs().get("ctrl")
    if ctrl is not None:
        v.wrmsr(ctrl, 0)
    for i, p in enumerate(pmu.gp):
        v.wrmsr(pmu.counter_msrs(p)[-1], PLANT + i)
        v.wrmsr(pmu.eventsel_msr(p), BRANCHES[pmu.vendor] | USR | OS | EN)
    if ctrl is not None:
        v.wrmsr(ctrl, (1 << len(pmu.gp)) - 1)
    return len(pmu.gp)


def planted(value: int) -> bool:
    return value >> 40 == PLANT >> 40


def assert_no_residue(host: Any) -> None:
    """After every VM is destroyed: no KVM-owned event anywhere in the host perf scheduler,
    and no guest value in any host counter.

    Mediated: every physical counter, selector, fixed control, status and global control the
    host does not use is zero (`kvm_mediated_pmu_put` zeroed them). Emulated: KVM never owns a
    physical counter; perf stops a released event's counter without clearing it (x86_pmu_stop),
    so a free counter may keep the -period perf derived from the guest value, but it is disabled
    and no host event can read it: every counter a host event holds was programmed by perf for
    that event (its raw value is no planted guest value) and nothing else is enabled."""
    perf = host.perf
    kvm = [e for e in perf.events if e.owner == "kvm"]
    for ctx in perf.ctx:
        kvm += [e for g in ctx.groups for e in g.group if e.owner == "kvm"]
        kvm += [e for e in ctx.active if e.owner == "kvm"]
    for t in host.tasks.values():
        kvm += [e for g in t.perf_events for e in g.group if e.owner == "kvm"]
    assert kvm == [], f"KVM events left in the host scheduler: {kvm}"
    mediated = host.mode_name == "mediated"
    for cpu in host.cpus:
        hw = cpu.pmu
        used = {e.idx for e in perf.ctx[cpu.index].active if e.idx is not None}
        for p in hw.pmcs:
            if p.idx in used:
                assert not planted(p.value), f"cpu{cpu.index} pmc{p.idx} holds a guest value {p.value:#x}"
                continue
            assert not (p.local_en and p.global_en), f"cpu{cpu.index} pmc{p.idx} enabled with no host event"
            if mediated:
                assert p.value == 0, f"cpu{cpu.index} pmc{p.idx} = {p.value:#x} after the put"
                sel = hw.eventsel_msr(p)
                assert sel is None or hw.rdmsr(sel) == 0, f"cpu{cpu.index} selector of pmc{p.idx} not zero"
        if mediated and not used:
            assert hw.global_status == 0 and all(v == 0 for v in hw.entry_loads.values())
        for f in cpu.facilities.values():
            assert not getattr(f, "active", False), f"cpu{cpu.index} {f.name} still recording"


# ---- calls on a destroyed VM ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_every_guest_facing_call_raises_at_once_and_destroy_twice_is_harmless(mode: str) -> None:
    host, vm, v = make("intel/icelake", mode)
    v.execute(Work(instructions=1000))
    vm.destroy()
    vm.destroy()
    now = [c.now for c in host.cpus]
    calls = [
        lambda: v.execute(Work(instructions=10**6)),
        lambda: v.queue(Work(instructions=10**6)),
        lambda: v.wrmsr(0x186, 0),
        lambda: v.rdmsr(0x186),
        lambda: v.rdpmc(0),
        lambda: v.cpuid(0xA),
        lambda: v.xsaves(1 << 15),
        lambda: v.xrstors(None, 0),
        lambda: v.save_state(),
        lambda: v.restore_state({}),
        lambda: vm.set_pmu_event_filter("deny", [0xC0]),
        lambda: vm.guest_perf,
    ]
    for call in calls:
        with pytest.raises(vpmu.VmDestroyedError) as ei:
            call()
        assert ei.value.errno == errno.EIO and "destroyed" in str(ei.value)
        assert isinstance(ei.value, vpmu.PerfError)
    assert [c.now for c in host.cpus] == now  # nothing ran
    host.advance(ns=1_000_000)  # time passes without the dead vCPU
    assert v.task not in host.cpus[0].tasks and v.task.pid not in host.tasks


@pytest.mark.parametrize("mode", MODES)
def test_destroyed_vm_name_is_kept_and_new_vms_get_fresh_names(mode: str) -> None:
    host, vm, _ = make("intel/icelake", mode)
    vm.destroy()
    assert host.vms == [vm] and vm.destroyed and vm.destroyed_ns is not None
    assert host.create_vm(vcpus=1, pin=[0]).name == "vm1"
    with pytest.raises(vpmu.ConfigError):
        host.create_vm(vcpus=1, pin=[1], name="vm0")


# ---- the report keeps the destroyed VM's figures -------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", CPUS)
def test_report_keeps_the_figures_up_to_destroy_time(cpu: str, mode: str) -> None:
    host, vm, v = make(cpu, mode)
    program_all(v)
    ev = vm.guest_perf.perf_event_open(PerfEventAttr(config="instructions", pinned=True), cpu=0)
    v.execute(Work(instructions=3_000_000, branches=300_000))
    before = host.report()
    vm.destroy()
    at_destroy = host.report()  # includes the destroy's own work (the last exit, releases)
    host.spawn_task("after", cpu=0).execute(Work(instructions=5_000_000))
    host.advance(ns=5_000_000)
    after = host.report()
    name = v.name
    assert after["overhead"][name] == at_destroy["overhead"][name]
    assert after["overhead"][name]["guest_cycles"] == before["overhead"][name]["guest_cycles"]
    assert after["guest_counters"][name] == before["guest_counters"][name]
    (row,) = [r for r in after["events"] if r["scope"] == f"guest:{vm.name}"]
    assert row["time_enabled_ns"] <= vm.destroyed_ns
    assert 3_000_000 <= row["truth"] < 3_000_100
    # the enabling WRMSR may be the event's too (DESIGN §5, docs/report-schema.md `truth`)
    assert row["truth"] <= row["value"] <= row["truth"] + 1
    assert ev.closed and row["state"] == "ACTIVE"  # the state it had when the guest died


# ---- emulated: KVM's perf events are released, their counters free at once ---------------------


@pytest.mark.parametrize("cpu", CPUS)
def test_emulated_destroy_frees_the_counters_at_once(cpu: str) -> None:
    host, vm, v = make(cpu, "emulated")
    n = program_all(v)
    v.execute(Work(instructions=1_000_000, branches=100_000))
    assert sum(1 for e in host.perf.events if e.owner == "kvm") == n
    flex = [host.perf_event_open(PerfEventAttr(config="branches", exclude_guest=True), pid=-1, cpu=0) for _ in range(n)]
    v.execute(Work(instructions=1_000_000, branches=100_000))
    assert all(e.state == EventState.INACTIVE for e in flex)  # KVM's pinned events hold them
    vm.destroy()
    assert all(e.state == EventState.ACTIVE for e in flex)  # no time passed
    assert_no_residue(host)


@pytest.mark.parametrize("cpu", CPUS)
def test_emulated_host_pinned_event_in_error_recovers_when_reenabled(cpu: str) -> None:
    """A host per-task pinned event on the vCPU thread loses to KVM's (first come) and goes
    to ERROR; after destroy it stays ERROR (perf never retries a pinned event by itself)
    until the host enables it again (perf_event_enable: ERROR -> INACTIVE)."""
    host, vm, v = make(cpu, "emulated")
    program_all(v)
    v.execute(Work(instructions=1_000_000, branches=100_000))
    ev = host.perf_event_open(PerfEventAttr(config="branches", pinned=True, exclude_guest=True), pid=v.task.pid)
    v.execute(Work(instructions=1_000_000, branches=100_000))
    assert ev.state == EventState.ERROR
    vm.destroy()
    assert ev.state == EventState.ERROR
    ev.enable()
    assert ev.state == EventState.INACTIVE  # the thread is gone: it waits, no longer in ERROR
    assert_no_residue(host)


def test_emulated_destroy_releases_the_vlbr_event_and_the_lbr() -> None:
    host = vpmu.compose(cpu="intel/icelake", mode="emulated", facilities=("lbr",), cpus=2)
    vm = host.create_vm(vcpus=1, pin=[0], exits=NO_EXITS)
    v = vm.vcpus[0]
    v.wrmsr(0x1D9, 1)  # DEBUGCTL.LBR: KVM creates its vLBR event
    v.execute(Work(instructions=1_000_000, branches=100_000))
    vlbr = next(iter(v.mode_state.vlbrs.values()))
    assert vlbr.event is not None and vlbr.active
    lbr = PerfEventAttr(config="branches", exclude_guest=True, branch_sample_type=("any",), sample_period=10_000)
    user = host.perf_event_open(lbr, pid=-1, cpu=0)
    assert user.state != EventState.ACTIVE  # the LBR belongs to the guest
    vm.destroy()
    assert vlbr.event is None and user.state == EventState.ACTIVE
    assert v.mode_state.stats["vlbr_releases"] == 1
    assert_no_residue(host)


# ---- mediated: the context goes back, the mediated PMU reference is dropped -------------------


@pytest.mark.parametrize("switch_at", ["run_loop", "exit", "vcpu_run"])
@pytest.mark.parametrize("cpu", CPUS)
def test_mediated_destroy_puts_the_context_and_lifts_the_rule_with_the_last_vm(cpu: str, switch_at: str) -> None:
    host = vpmu.compose(cpu=cpu, mode="mediated", cpus=2, mode_options={"switch_at": switch_at})
    a = host.create_vm(vcpus=1, pin=[0], exits=NO_EXITS)
    b = host.create_vm(vcpus=1, pin=[1], exits=NO_EXITS)
    for vm in (a, b):
        program_all(vm.vcpus[0])
        vm.vcpus[0].execute(Work(instructions=1_000_000, branches=100_000))
    a.destroy()
    with pytest.raises(vpmu.PerfError) as ei:  # b still exists
        host.perf_event_open(WATCHDOG, pid=-1, cpu=0)
    assert ei.value.errno == errno.EOPNOTSUPP
    b.destroy()
    wd = host.perf_event_open(WATCHDOG, pid=-1, cpu=0)  # perf_release_mediated_pmu: the last one
    assert wd.state == EventState.ACTIVE
    assert host.report()["mode"]["mediated_vms"] == 0
    assert_no_residue(host)
    assert host.leaks.leaks == []
    with pytest.raises(vpmu.PerfError) as e2:  # and a new mediated VM meets the watchdog: EBUSY
        host.create_vm(vcpus=1, pin=[0])
    assert e2.value.errno == errno.EBUSY


@pytest.mark.parametrize("cpu", CPUS)
def test_mediated_rfc1_error_event_recovers_after_destroy_when_reenabled(cpu: str) -> None:
    host = vpmu.compose(cpu=cpu, mode="mediated", cpus=2, mode_options={"host_policy": "rfc1"})
    wd = host.perf_event_open(WATCHDOG, pid=-1, cpu=0)
    vm = host.create_vm(vcpus=1, pin=[0], exits=NO_EXITS)
    vm.vcpus[0].execute(Work(instructions=1_000_000))
    assert wd.state == EventState.ERROR
    vm.destroy()
    host.advance(ns=1_000_000)
    assert wd.state == EventState.ERROR  # perf never re-enables a pinned event in ERROR
    wd.enable()
    assert wd.state == EventState.ACTIVE
    t = host.spawn_task("after", cpu=0)
    t.execute(Work(instructions=2_000_000))
    before = wd.read().value
    host.advance(ns=1_000_000)
    assert wd.read().value - before >= 2_000_000
    assert_no_residue(host)


# ---- the leak check detects a destroy that forgets its release ---------------------------------


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("mode", MODES)
def test_leak_check_after_destroy(cpu: str, mode: str) -> None:
    host, vm, v = make(cpu, mode)
    program_all(v)
    v.execute(Work(instructions=2_000_000, branches=200_000))
    host.perf_event_open(PerfEventAttr(config="branches", exclude_guest=True), pid=-1, cpu=0)
    vm.destroy()
    assert_no_residue(host)
    # a new VM on the same CPU sees nothing of the old one
    fresh = host.create_vm(vcpus=1, pin=[0], exits=NO_EXITS).vcpus[0]
    fresh.execute(Work(instructions=1_000))
    assert all(fresh.rdmsr(fresh.pmu.counter_msrs(p)[0]) == 0 for p in fresh.pmu.gp)


def test_leak_check_fails_when_emulated_destroy_skips_the_release(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emulated_mode, "pmc_stop_counter", lambda kp, api: None)
    host, vm, v = make("intel/icelake", "emulated")
    program_all(v)
    v.execute(Work(instructions=1_000_000, branches=100_000))
    vm.destroy()
    with pytest.raises(AssertionError, match="KVM events left"):
        assert_no_residue(host)


def test_leak_check_fails_when_the_mediated_put_leaves_guest_values(monkeypatch: pytest.MonkeyPatch) -> None:
    host, vm, v = make("intel/icelake", "mediated")
    program_all(v)
    v.execute(Work(instructions=1_000_000, branches=100_000))
    monkeypatch.setattr(mediated_switch.Switcher, "put", lambda self, vcpu: None)
    vm.destroy()
    with pytest.raises(AssertionError, match="after the put|enabled with no host event"):
        assert_no_residue(host)
