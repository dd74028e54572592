"""KVM_REQ_PMU: deferred reprogram, reuse vs recreate, the perf attr KVM builds, lazy release."""

from __future__ import annotations

import errno
import inspect

import pytest
from emu_helpers import INTEL, MODELS, PREFERRED, Guest, make_host, need
from vpmu_core import ExitProfile, PerfEventAttr, Work
from vpmu_core.events import EventKind
from vpmu_core.hw.pmc import FIXED_BASE
from vpmu_core.perf.attr import EventState

from vpmu_mode_emulated.perf_api import KvmPerfCalls

QUIET = ExitProfile(rate_per_s=0)


def _guest(cpu: str, **kw) -> Guest:  # type: ignore[no-untyped-def]
    host = make_host(cpu, **kw)
    return Guest(host.create_vm(vcpus=1, pin=[0], exits=QUIET).vcpus[0])


@pytest.mark.parametrize("cpu", MODELS)
def test_en_toggle_reuses_event_change_recreates(cpu: str) -> None:
    g = _guest(cpu)
    st = g.kpmu().stats
    g.sel(0, EventKind.BRANCHES)
    assert (st["perf_event_create"], st["reprogram_reuse"]) == (1, 0)
    ev = g.kpmu().pmcs[0].perf_event
    for _ in range(5):  # EN off/on: paused, then the same event resumed (new period, enable)
        g.sel(0, EventKind.BRANCHES, en=False)
        assert ev.state == EventState.OFF
        g.sel(0, EventKind.BRANCHES)
        assert g.kpmu().pmcs[0].perf_event is ev and ev.state == EventState.ACTIVE
    assert st["perf_event_create"] == 1 and st["perf_event_release"] == 0
    assert st["reprogram_reuse"] == 5 and st["reprogram_left_paused"] >= 5
    assert st["perf_event_period"] == 5 and st["perf_event_enable"] == 5
    g.sel(0, EventKind.INSTRUCTIONS)  # a different event: release + create
    assert st["perf_event_create"] == 2 and st["perf_event_release"] == 1
    assert ev.closed and g.kpmu().pmcs[0].perf_event is not ev
    g.sel(0, EventKind.INSTRUCTIONS, intr=True)  # INT changes the selector: recreate too
    assert st["perf_event_create"] == 3


@pytest.mark.parametrize("cpu", [m for m in MODELS if m != "amd/k8"])
def test_global_ctrl_toggle_reuses(cpu: str) -> None:
    g = _guest(cpu)
    if g.gctrl is None:
        pytest.skip("no global control (PerfMon v1)")
    st = g.kpmu().stats
    g.set_global(0)
    g.sel(0, EventKind.BRANCHES)
    assert st["perf_event_create"] == 0  # globally disabled: not allowed, nothing created
    g.set_global(1)
    assert st["perf_event_create"] == 1
    for _ in range(3):
        g.set_global(0)
        g.set_global(1)
    assert st["perf_event_create"] == 1 and st["reprogram_reuse"] == 3
    # the same value written again changes nothing: no reprogram request
    before = st["req_pmu_serviced"]
    g.sel(0, EventKind.BRANCHES)
    assert st["req_pmu_serviced"] == before


def test_reprogram_is_deferred_to_vm_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = need(PREFERRED)
    g = _guest(cpu)
    where: list[tuple[str, ...]] = []
    real = KvmPerfCalls.create

    def spy(self, attr, handler, hw=None):  # type: ignore[no-untyped-def]
        where.append(tuple(f.function for f in inspect.stack()[1:12]))
        return real(self, attr, handler, hw)

    monkeypatch.setattr(KvmPerfCalls, "create", spy)
    g.set_global(0)
    g.sel(0, EventKind.BRANCHES)
    g.set_global(1)
    assert len(where) == 1
    stack = where[0]
    assert "vpmu_vm_entry" in stack and "kvm_pmu_handle_event" in stack
    assert "vpmu_guest_wrmsr" not in stack


@pytest.mark.parametrize("cpu", MODELS)
def test_perf_attr_is_kvms(cpu: str) -> None:
    g = _guest(cpu)
    g.set_global(0)
    g.write(0, 0x1234)
    sel = g.sel(0, EventKind.BRANCHES, os=False, intr=True)
    g.set_global(1)
    kp = g.kpmu().pmcs[0]
    ev = kp.perf_event
    a = ev.attr
    assert a.type == "raw" and a.config == sel & 0xF_FF84_FFFF == g.codes[EventKind.BRANCHES]
    assert a.pinned and a.exclude_host and not a.exclude_guest and a.exclude_idle
    assert a.exclude_kernel and not a.exclude_user
    assert a.sample_period == (-0x1234) & kp.mask
    assert ev.pid == g.v.task.pid and ev.cpu == -1 and ev.owner == "kvm" and ev.task is g.v.task
    assert kp.intr


@pytest.mark.parametrize("cpu", MODELS)
def test_zero_counter_samples_a_full_period(cpu: str) -> None:
    g = _guest(cpu)
    g.sel(0, EventKind.BRANCHES)
    kp = g.kpmu().pmcs[0]
    assert kp.perf_event.attr.sample_period == kp.mask + 1


@pytest.mark.parametrize("cpu", INTEL)
def test_fixed_counters_are_raw_pseudo_events(cpu: str) -> None:
    """fixed0 = 0x00c0, fixed1 = 0x003c, fixed2 = 0x0300; perf may give them GP counters."""
    host = make_host(cpu)
    # A host per-CPU pinned `instructions` event takes fixed0 first (fixed counters first).
    hev = host.perf_event_open(PerfEventAttr(config="instructions", pinned=True, exclude_guest=True), pid=-1, cpu=0)
    assert hev.idx == FIXED_BASE
    v = host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=100_000)).vcpus[0]
    g = Guest(v)
    fctrl = g.pmu.fixed_ctrl_msr()
    v.wrmsr(g.gctrl, 0)
    v.wrmsr(fctrl, 0x333)  # fixed0..2: OS + USR
    v.wrmsr(g.gctrl, 0b111 << FIXED_BASE)
    kps = [g.kpmu().pmcs[FIXED_BASE + i] for i in range(3)]
    assert [kp.perf_event.attr.config for kp in kps] == [0x00C0, 0x003C, 0x0300]
    assert [kp.current_config for kp in kps] == [0x3, 0x3, 0x3]  # the 4-bit field
    ev0 = kps[0].perf_event
    assert ev0.state == EventState.ACTIVE and ev0.idx is not None and ev0.idx < FIXED_BASE  # a GP counter
    n = 5_000_000
    v.execute(Work(instructions=n, cycles=2 * n))
    v.wrmsr(g.gctrl, 0)
    assert v.rdmsr(g.pmu.counter_msrs(g.pmu.fixed[0])[0]) == n + 1
    # KVM emulates instruction (and branch) counts only: the exit's cycles are host-mode
    assert v.rdmsr(g.pmu.counter_msrs(g.pmu.fixed[1])[0]) == 2 * n
    assert host.silent.intervals == []


def _switch_away_and_back(host, v) -> None:  # type: ignore[no-untyped-def]
    """Run another task on the vCPU's CPU for a slice, then the vCPU again."""
    t = host.spawn_task("other", cpu=0)
    t.execute(Work(instructions=3_000_000))
    v.queue(Work(instructions=20_000_000))
    host.advance(ns=12_000_000)


@pytest.mark.parametrize("cpu", MODELS)
def test_lazy_release_at_sched_in(cpu: str) -> None:
    host = make_host(cpu)
    v = host.create_vm(vcpus=1, pin=[0], exits=QUIET).vcpus[0]
    g = Guest(v)
    g.sel(0, EventKind.BRANCHES)
    g.sel(1, EventKind.INSTRUCTIONS)
    v.execute(Work(instructions=1000, branches=100))
    g.sel(0, EventKind.BRANCHES, en=False)  # gp0 disabled, gp1 stays enabled
    kpmu = g.kpmu()
    assert kpmu.pmcs[0].perf_event is not None
    # first time slice: gp0 was written in it, so it is "in use" and survives
    _switch_away_and_back(host, v)
    assert kpmu.pmcs[0].perf_event is not None
    # a whole slice without a write to gp0: released at the next sched-in; gp1 (enabled) kept
    _switch_away_and_back(host, v)
    assert kpmu.pmcs[0].perf_event is None and kpmu.stats["lazy_releases"] == 1
    assert kpmu.pmcs[1].perf_event is not None
    assert g.read(0) == 100  # the value survives the release (folded into the base)
    creates = kpmu.stats["perf_event_create"]
    g.sel(0, EventKind.BRANCHES)  # re-enabling needs a new event (current_config was reset)
    assert kpmu.stats["perf_event_create"] == creates + 1


def test_lazy_release_option_off() -> None:
    cpu = need(PREFERRED)
    host = make_host(cpu, mode_options={"lazy_release": False})
    v = host.create_vm(vcpus=1, pin=[0], exits=QUIET).vcpus[0]
    g = Guest(v)
    g.sel(0, EventKind.BRANCHES)
    g.sel(0, EventKind.BRANCHES, en=False)
    for _ in range(3):
        _switch_away_and_back(host, v)
    assert g.kpmu().pmcs[0].perf_event is not None


def test_failed_creation_is_retried_at_next_request() -> None:
    """perf refuses the event: the bit is re-set without a new KVM_REQ_PMU, so the retry
    waits for the next request (another counter's reprogram), as kvm_pmu_handle_event does."""
    cpu = need(PREFERRED)
    host = make_host(cpu)
    v = host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=200_000)).vcpus[0]
    g = Guest(v)
    st = g.kpmu().stats
    host.perf.open_filter = lambda attr, pid, cpu: errno.EBUSY
    g.sel(0, EventKind.BRANCHES)
    assert st["create_failed"] == 1 and g.kpmu().pmcs[0].perf_event is None
    assert g.kpmu().reprogram_pmi & 1 and not g.kpmu().req_pmu
    host.perf.open_filter = None
    v.execute(Work(instructions=2_000_000, branches=1000))  # background exits do not retry
    assert v.stats.total_exits > 10 and g.kpmu().pmcs[0].perf_event is None
    assert [iv.cause for iv in host.silent.intervals] == ["not scheduled at creation"]
    g.sel(1, EventKind.INSTRUCTIONS)  # a new KVM_REQ_PMU: gp0 is retried too
    assert g.kpmu().pmcs[0].perf_event is not None and st["create_failed"] == 1
    assert g.read(0) == 0  # the branches it missed are lost, silently
    assert host.silent.intervals[0].end_ns is not None
