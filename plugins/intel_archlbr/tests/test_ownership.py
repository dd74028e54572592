"""A host perf event with a branch stack claims the "lbr" resource through the perf
scheduler: per-CPU pinned beats per-task pinned beats flexible; equal filters share."""

from __future__ import annotations

from typing import Any

import pytest
from lbr_helpers import ARCH_CPU, make_host

from vpmu_core import EventState, PerfError, PerfEventAttr, Work

CASES = [("intel/icelake", "lbr"), ("intel/skylake", "lbr"), (ARCH_CPU, "arch_lbr")]


def lbr_event(host: Any, filt: str, pinned: bool, pid: int = -1, cpu: int = 0) -> Any:
    attr = PerfEventAttr(config="instructions", pinned=pinned, branch_sample_type=(filt,))
    return host.perf_event_open(attr, pid=pid, cpu=cpu)


@pytest.mark.parametrize(("cpu", "facility"), CASES)
def test_facility_states_name_the_lbr_resource(cpu: str, facility: str) -> None:
    host = make_host(cpu, facility)
    assert host.facilities[facility].resource == "lbr"
    assert host.cpus[0].facilities[facility].resource == "lbr"


@pytest.mark.parametrize(("cpu", "facility"), CASES)
def test_priority_cpu_pinned_over_task_pinned_over_flexible(cpu: str, facility: str) -> None:
    host = make_host(cpu, facility)
    t = host.spawn_task("app", cpu=0)
    t.execute(Work(instructions=10**10))  # keeps running while the test looks
    flex = lbr_event(host, "any", pinned=False)
    host.advance(1_000_000)
    assert flex.state == EventState.ACTIVE
    assert flex.hw.resources == (("lbr", "any"),)

    task_pinned = lbr_event(host, "user", pinned=True, pid=t.pid, cpu=-1)
    host.advance(1_000_000)
    assert task_pinned.state == EventState.ACTIVE and flex.state == EventState.INACTIVE

    cpu_pinned = lbr_event(host, "kernel", pinned=True)
    host.advance(1_000_000)
    assert cpu_pinned.state == EventState.ACTIVE
    assert task_pinned.state == EventState.ERROR and task_pinned.blocked_by == "host per-CPU pinned event"
    assert flex.state == EventState.INACTIVE

    cpu_pinned.close()
    host.advance(1_000_000)
    assert task_pinned.state == EventState.ERROR, "a pinned event in ERROR stays there"
    assert flex.state == EventState.ACTIVE
    task_pinned.enable()
    host.advance(1_000_000)
    assert task_pinned.state == EventState.ACTIVE and flex.state == EventState.INACTIVE


def test_events_with_the_same_filter_share_the_lbr() -> None:
    host = make_host("intel/icelake", "lbr")
    a = lbr_event(host, "any", pinned=True)
    b = lbr_event(host, "any", pinned=True)
    c = lbr_event(host, "user", pinned=False)
    host.advance(1_000_000)
    assert a.state == b.state == EventState.ACTIVE
    assert c.state == EventState.INACTIVE


def test_events_without_branch_stack_do_not_claim_the_lbr() -> None:
    host = make_host("intel/icelake", "lbr")
    lbr = lbr_event(host, "any", pinned=True)
    plain = host.perf_event_open(PerfEventAttr(config="cycles", pinned=True), pid=-1, cpu=0)
    host.advance(1_000_000)
    assert lbr.state == plain.state == EventState.ACTIVE
    assert plain.hw.resources == ()


def test_branch_stack_needs_an_lbr_model() -> None:
    from lbr_helpers import PLUGINS

    from vpmu_core import compose

    host = compose(cpu="intel/icelake", mode="reference", plugins=PLUGINS)  # no facility attached
    ev = lbr_event(host, "any", pinned=True)  # the model has LBR: the driver accepts it
    assert ev.hw.resources == (("lbr", "any"),)
    host2 = compose(cpu="toy/basic", mode="reference", plugins=PLUGINS)
    with pytest.raises(PerfError):
        lbr_event(host2, "any", pinned=True)
