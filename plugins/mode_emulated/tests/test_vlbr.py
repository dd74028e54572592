"""The vLBR pattern with a fake LBR-like facility (the LBR plugin does not exist yet), and
the gap document §4.2 cases 1-5 with that resource."""

from __future__ import annotations

from typing import Any

import vpmu_core
from emu_helpers import PREFERRED, need, plugins_for
from vpmu_core import ExitProfile, PerfEventAttr, Work
from vpmu_core.events import EventKind
from vpmu_core.markers import hookimpl
from vpmu_core.perf.attr import EventState
from vpmu_core.perf.driver import HwEvent
from vpmu_core.plugins.records import FacilitySpec

CTL, REC = 0x1D9, 0x680  # a DEBUGCTL-like control (bit 0 = on) and one record MSR
B = 100_000
W = Work(instructions=1_000_000, branches=B)


class FakeLbrState:
    """Counts the branches it sees while on: enough to tell whether the guest 'has' LBR."""

    name = "fakelbr"
    resource = "lbr"
    xsave_component = None
    control_msrs = (CTL,)

    def __init__(self) -> None:
        self.ctl = 0
        self.recorded = 0

    def has_msr(self, msr: int) -> bool:
        return msr in (CTL, REC)

    def rdmsr(self, msr: int) -> int:
        return self.ctl if msr == CTL else self.recorded

    def wrmsr(self, msr: int, value: int) -> None:
        if msr == CTL:
            self.ctl = value & 1
        else:
            self.recorded = value

    @property
    def active(self) -> bool:
        return bool(self.ctl & 1)

    def record(self, counts: tuple[int, ...], cpl: int, guest: bool, position: int) -> None:
        self.recorded += counts[EventKind.BRANCHES]

    def xsaves(self) -> bytes:
        return b""

    def xrstors(self, data: bytes) -> None:
        pass

    def xsave_size(self) -> int:
        return 0

    def state_msrs(self) -> list[int]:
        return [CTL, REC]

    def snapshot(self) -> dict[str, Any]:
        return {"ctl": self.ctl, "recorded": self.recorded}

    def restore(self, state: dict[str, Any]) -> None:
        self.ctl, self.recorded = state["ctl"], state["recorded"]


class FakeLbr:
    name = "fakelbr"
    resource = "lbr"

    def __init__(self, model: Any, options: dict[str, Any]) -> None:
        pass

    def make_state(self, guest: bool, depth: int | None = None) -> FakeLbrState:
        return FakeLbrState()

    def adjust_cpuid(self, table: Any, guest: bool) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


class FakeLbrPlugin:
    @hookimpl
    def vpmu_register_facilities(self, register: Any) -> None:
        register(FacilitySpec(name="fakelbr", factory=FakeLbr))


def _setup(exits: float = 20_000) -> tuple[Any, Any]:
    cpu = need(PREFERRED)
    host = vpmu_core.compose(
        cpu=cpu, mode="emulated", facilities=("fakelbr",), plugins=[*plugins_for(cpu), ("fakelbr", FakeLbrPlugin())]
    )
    v = host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=exits)).vcpus[0]
    return host, v


def host_lbr_user(host: Any, pinned: bool) -> Any:
    """A host per-CPU LBR user on CPU 0 (e.g. `perf record -b`), as a resource claim."""
    attr = PerfEventAttr(type="raw", config=0, pinned=pinned, branch_sample_type=("any",), name="host lbr")
    hw = HwEvent(config=0, mask=0, resources=(("lbr", "host"),), interrupt=False)
    return host.perf.perf_event_open(attr, pid=-1, cpu=0, hw=hw)


def _vlbr(v: Any) -> Any:
    return v.mode_state.vlbrs["fakelbr"]


def test_enabling_creates_a_counterless_pinned_event_and_records() -> None:
    host, v = _setup()
    v.wrmsr(CTL, 1)
    vl = _vlbr(v)
    ev = vl.event
    assert ev is not None and ev.state == EventState.ACTIVE and ev.idx is None
    assert ev.attr.pinned and ev.attr.exclude_host and ev.task is v.task and ev.cpu == -1
    assert ev.hw.resources == (("lbr", "guest"),)
    v.execute(W)
    assert v.rdmsr(REC) == B
    assert host.silent.intervals == []


def test_record_msrs_stay_intercepted_without_passthrough_declaration() -> None:
    _, v = _setup(exits=0)
    v.wrmsr(CTL, 1)
    n = v.stats.exits["msr_read"]
    v.rdmsr(REC)
    assert v.stats.exits["msr_read"] == n + 1


def test_passthrough_while_active_when_declared() -> None:
    host, v = _setup(exits=0)
    v.facilities["fakelbr"].passthrough_msrs = (REC,)
    _vlbr(v).passthrough_ok = frozenset({REC})
    v.wrmsr(CTL, 1)
    v.execute(Work(instructions=10))  # an entry decides the passthrough
    n = v.stats.total_exits
    v.rdmsr(REC)
    assert v.stats.total_exits == n  # no exit while the vLBR event is ACTIVE
    host_lbr_user(host, pinned=True)  # the host takes the LBR
    v.cpuid(0, 0)  # next entry: intercepted again
    v.rdmsr(REC)
    assert v.stats.total_exits == n + 2


def test_lazy_release_when_guest_turned_it_off() -> None:
    host, v = _setup()
    v.wrmsr(CTL, 1)
    v.execute(W)
    v.wrmsr(CTL, 0)
    assert _vlbr(v).event is not None
    t = host.spawn_task("other", cpu=0)
    t.execute(Work(instructions=3_000_000))
    v.queue(Work(instructions=20_000_000))
    host.advance(ns=12_000_000)
    assert _vlbr(v).event is None and v.mode_state.stats["vlbr_releases"] == 1


def test_case1_host_pinned_lbr_at_start_guest_cannot_use_lbr() -> None:
    host, v = _setup()
    host_lbr_user(host, pinned=True)
    v.wrmsr(CTL, 1)
    assert _vlbr(v).event.state == EventState.ERROR
    v.execute(W)
    assert v.rdmsr(REC) == 0  # intercepted and not ACTIVE: reads 0, nothing recorded
    assert v.facilities["fakelbr"].recorded == 0
    (iv,) = [iv for iv in host.silent.intervals if iv.counter == "fakelbr"]
    assert iv.cause == "not scheduled at creation" and iv.end_ns is None


def test_case2_host_flexible_lbr_at_start_guest_preempts() -> None:
    host, v = _setup()
    h = host_lbr_user(host, pinned=False)
    assert h.state == EventState.ACTIVE
    v.wrmsr(CTL, 1)
    assert _vlbr(v).active and h.state == EventState.INACTIVE
    v.execute(W)
    assert v.rdmsr(REC) == B


def test_case3_host_pinned_lbr_arrives_guest_loses_it() -> None:
    host, v = _setup()
    v.wrmsr(CTL, 1)
    v.execute(W)
    t0 = v.now_ns()
    host_lbr_user(host, pinned=True)
    assert _vlbr(v).event.state == EventState.ERROR
    v.execute(W)
    assert v.facilities["fakelbr"].recorded == B  # stopped recording, silently
    assert v.rdmsr(REC) == 0  # the access is intercepted again and reads 0
    (iv,) = [iv for iv in host.silent.intervals if iv.counter == "fakelbr"]
    assert iv.cause == "host per-CPU pinned event" and iv.start_ns == t0


def test_case4_host_flexible_lbr_arrives_guest_keeps_it() -> None:
    host, v = _setup()
    v.wrmsr(CTL, 1)
    v.execute(W)
    h = host_lbr_user(host, pinned=False)
    v.execute(W)
    assert _vlbr(v).active and h.state == EventState.INACTIVE
    assert v.rdmsr(REC) == 2 * B


def test_case5_host_pinned_lbr_off_guest_gets_it_back() -> None:
    """The vLBR event in ERROR is never re-enabled by KVM: the guest gets the LBR back after
    turning it off (lazy release of the event) and on again (a new event)."""
    host, v = _setup()
    v.wrmsr(CTL, 1)
    h = host_lbr_user(host, pinned=True)
    v.execute(W)
    h.close()
    v.execute(W)
    assert not _vlbr(v).active  # still ERROR: nothing re-enables it
    v.wrmsr(CTL, 0)
    t = host.spawn_task("other", cpu=0)
    t.execute(Work(instructions=3_000_000))
    v.queue(Work(instructions=20_000_000))
    host.advance(ns=12_000_000)
    assert _vlbr(v).event is None
    v.wrmsr(REC, 0)  # touching a record MSR re-creates the event lazily...
    v.wrmsr(CTL, 1)
    assert _vlbr(v).active
    v.execute(W)
    assert v.rdmsr(REC) == B
    (iv,) = [iv for iv in host.silent.intervals if iv.counter == "fakelbr"]
    assert iv.end_ns is not None
