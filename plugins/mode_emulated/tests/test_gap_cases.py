"""KVM vPMU gap document (seed 003) §3.2 cases 1-5, with numbers: what the guest reads next
to ground truth, the kvm perf event's state, and the silent-error intervals."""

from __future__ import annotations

import pytest
from emu_helpers import MODELS, Guest, make_host
from vpmu_core import ExitProfile, PerfEventAttr, Work
from vpmu_core.events import EventKind
from vpmu_core.perf.attr import EventState

B = 1_000_000
W = Work(instructions=10 * B, branches=B)  # 10M cycles = 3.33 ms at 3 GHz
SPAN_NS = 10 * B * 1_000_000_000 // 3_000_000_000
CASE_MODELS = [m for m in MODELS if m in ("intel/icelake", "intel/skylake", "amd/zen4", "amd/zen2")]


def _setup(cpu: str) -> tuple[object, Guest]:
    host = make_host(cpu)
    v = host.create_vm(vcpus=1, pin=[0], exits=ExitProfile(rate_per_s=20_000)).vcpus[0]
    return host, Guest(v)


def _occupy(host, pinned: bool) -> list:  # type: ignore[no-untyped-def]
    """Host per-CPU events on CPU 0 filling every GP counter (branches can use any)."""
    n = len(host.cpus[0].pmu.gp)  # type: ignore[attr-defined]
    attr = PerfEventAttr(config="branches", pinned=pinned, exclude_guest=True, name="host")
    return [host.perf_event_open(attr, pid=-1, cpu=0) for _ in range(n)]  # type: ignore[attr-defined]


def _start(g: Guest) -> None:
    g.set_global(0)
    g.sel(0, EventKind.BRANCHES)
    g.set_global(1)


def _silent(host) -> list:  # type: ignore[no-untyped-def]
    return [iv for iv in host.silent.intervals if iv.counter == "gp0"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("cpu", CASE_MODELS)
def test_case1_host_pinned_occupies_all_counters_guest_reads_zero(cpu: str) -> None:
    host, g = _setup(cpu)
    hosts = _occupy(host, pinned=True)
    _start(g)
    ev = g.kpmu().pmcs[0].perf_event
    assert ev.state == EventState.ERROR
    g.v.execute(W)
    assert g.read(0) == 0  # truth: B
    assert all(h.state == EventState.ACTIVE for h in hosts)
    (iv,) = _silent(host)
    assert iv.cause == "not scheduled at creation" and iv.end_ns is None
    assert iv.duration(g.v.now_ns()) >= SPAN_NS


@pytest.mark.parametrize("cpu", CASE_MODELS)
def test_case2_pinned_released_guest_counts_again_total_short(cpu: str) -> None:
    host, g = _setup(cpu)
    hosts = _occupy(host, pinned=True)
    _start(g)
    g.v.execute(W)  # lost: ERROR
    for h in hosts:
        h.close()
    ev = g.kpmu().pmcs[0].perf_event
    g.v.execute(W)  # still lost: a pinned event in ERROR stays there until re-enabled
    assert ev.state == EventState.ERROR and g.read(0) == 0
    # the guest's perf re-enables its counters (any control write): KVM resumes the event,
    # perf_event_enable takes it out of ERROR, and it claims a counter
    g.sel(0, EventKind.BRANCHES, en=False)
    g.sel(0, EventKind.BRANCHES)
    assert ev.state == EventState.ACTIVE and g.kpmu().pmcs[0].perf_event is ev
    g.v.execute(W)
    assert g.read(0) == B  # correct while active; the total is short by 2 * B (truth: 3 * B)
    (iv,) = _silent(host)
    assert iv.end_ns is not None and iv.duration(0) >= 2 * SPAN_NS


@pytest.mark.parametrize("cpu", CASE_MODELS)
def test_case3_pinned_arrives_while_guest_counts_value_frozen(cpu: str) -> None:
    host, g = _setup(cpu)
    _start(g)
    g.v.execute(W)
    assert g.read(0) == B
    t0 = g.v.now_ns()
    _occupy(host, pinned=True)
    ev = g.kpmu().pmcs[0].perf_event
    assert ev.state == EventState.ERROR
    g.v.execute(W)
    g.v.execute(W)
    assert g.read(0) == B  # frozen (truth: 3 * B), the guest is not told
    (iv,) = _silent(host)
    assert iv.cause == "host per-CPU pinned event"
    assert iv.start_ns == t0 and iv.end_ns is None
    assert iv.duration(g.v.now_ns()) >= 2 * SPAN_NS


@pytest.mark.parametrize("cpu", CASE_MODELS)
def test_case4_host_flexible_occupy_guest_preempts_exact(cpu: str) -> None:
    host, g = _setup(cpu)
    hosts = _occupy(host, pinned=False)
    assert all(h.state == EventState.ACTIVE for h in hosts)
    _start(g)
    assert g.kpmu().pmcs[0].perf_event.state == EventState.ACTIVE
    g.v.execute(W)
    assert g.read(0) == B
    assert sum(h.state != EventState.ACTIVE for h in hosts) >= 1  # a host event was pushed out
    assert _silent(host) == []


@pytest.mark.parametrize("cpu", CASE_MODELS)
def test_case5_host_flexible_arrives_guest_keeps_counter(cpu: str) -> None:
    host, g = _setup(cpu)
    _start(g)
    g.v.execute(W)
    hosts = _occupy(host, pinned=False)
    g.v.execute(W)
    assert g.kpmu().pmcs[0].perf_event.state == EventState.ACTIVE
    assert g.read(0) == 2 * B
    assert any(h.state != EventState.ACTIVE for h in hosts)
    assert _silent(host) == []
