"""Host perf: priority classes, ERROR/INACTIVE rules, multiplexing, groups, assignment."""

from __future__ import annotations

import errno

import pytest

import vpmu_core as vpmu
from vpmu_core.perf.assign import assign_counters
from vpmu_core.perf.attr import EventState
from vpmu_core.perf.driver import HwEvent

A = vpmu.PerfEventAttr


def busy(host, cpu=0, ns=8_000_000, name="load"):
    t = host.spawn_task(name, cpu=cpu)
    t.execute(vpmu.Work(instructions=host.ns_to_cycles(ns), branches=1000))
    return t


def test_pid_and_cpu_both_minus_one_is_einval(host):
    with pytest.raises(vpmu.PerfError) as e:
        host.perf_event_open(A(config="instructions"), pid=-1, cpu=-1)
    assert e.value.errno == errno.EINVAL


def test_unknown_pid_is_esrch(host):
    with pytest.raises(vpmu.PerfError) as e:
        host.perf_event_open(A(config="instructions"), pid=4242, cpu=-1)
    assert e.value.errno == errno.ESRCH


def test_cpu_pinned_beats_task_pinned(host):
    t = busy(host)
    # toy/basic: 4 GP counters; 4 task-pinned cycles events fill them
    task_evs = [host.perf_event_open(A(config="cycles", pinned=True), pid=t.pid, cpu=-1) for _ in range(4)]
    host.advance(ns=1_000_000)
    assert all(e.state == EventState.ACTIVE for e in task_evs)
    cpu_ev = host.perf_event_open(A(config="cycles", pinned=True), pid=-1, cpu=0)
    host.advance(ns=1_000_000)
    assert cpu_ev.state == EventState.ACTIVE
    errors = [e for e in task_evs if e.state == EventState.ERROR]
    assert len(errors) == 1, "exactly one task-pinned event loses its counter"
    assert errors[0].blocked_by == "host per-CPU pinned event"


def test_task_pinned_beats_cpu_flexible(host):
    t = busy(host)
    flex = [host.perf_event_open(A(config="cycles"), pid=-1, cpu=0) for _ in range(4)]
    host.advance(ns=1_000_000)
    assert all(e.state == EventState.ACTIVE for e in flex)
    pinned = host.perf_event_open(A(config="cycles", pinned=True), pid=t.pid, cpu=-1)
    host.advance(ns=500_000)
    assert pinned.state == EventState.ACTIVE
    assert sum(e.state == EventState.ACTIVE for e in flex) == 3


def test_cpu_flexible_beats_task_flexible(host):
    t = busy(host)
    task_flex = host.perf_event_open(A(config="cycles"), pid=t.pid, cpu=-1)
    cpu_flex = [host.perf_event_open(A(config="cycles"), pid=-1, cpu=0) for _ in range(4)]
    host.advance(ns=100_000)
    assert all(e.state == EventState.ACTIVE for e in cpu_flex)
    assert task_flex.state == EventState.INACTIVE


def test_pinned_error_is_sticky_until_reenabled(host):
    busy(host, ns=20_000_000)
    hogs = [host.perf_event_open(A(config="cycles", pinned=True), pid=-1, cpu=0) for _ in range(4)]
    late = host.perf_event_open(A(config="cycles", pinned=True), pid=-1, cpu=0)
    assert late.state == EventState.ERROR
    hogs[0].close()
    host.advance(ns=2_000_000)
    assert late.state == EventState.ERROR, "an ERROR pinned event does not come back by itself"
    late.enable()
    assert late.state == EventState.ACTIVE
    before = late.read().value
    host.advance(ns=1_000_000)
    assert late.read().value > before


def test_disable_leaves_an_error_event_in_error(host):
    """kernel/events/core.c `_perf_event_disable`: an event at or below OFF (ERROR is below)
    is left as it is; only an enable clears ERROR (`_perf_event_enable`)."""
    busy(host, ns=20_000_000)
    hogs = [host.perf_event_open(A(config="cycles", pinned=True), pid=-1, cpu=0) for _ in range(4)]
    late = host.perf_event_open(A(config="cycles", pinned=True), pid=-1, cpu=0)
    assert late.state == EventState.ERROR
    late.disable()
    assert late.state == EventState.ERROR
    hogs[0].close()
    late.enable()
    assert late.state == EventState.ACTIVE


def test_flexible_rotation_and_scaling(host):
    t = busy(host, ns=40_000_000)
    evs = [host.perf_event_open(A(config="instructions"), pid=-1, cpu=0) for _ in range(6)]
    host.advance(ns=40_000_000)
    assert not t.runnable
    truth = host.truth.total(t.owner, vpmu.EventKind.INSTRUCTIONS)
    for e in evs:
        c = e.read()
        assert c.time_enabled == 40_000_000
        assert 0 < c.time_running < c.time_enabled
        # scaling recovers the truth within the multiplexing error of a steady load
        assert abs(c.scaled - truth) / truth < 0.2
    assert host.perf.stats.rotations >= 9
    # instructions may use the 4 GP counters and fixed counter 0: five run at any time
    total_running = sum(e.read().time_running for e in evs)
    assert total_running == pytest.approx(5 * 40_000_000, rel=0.01)


def test_group_is_all_or_nothing(host):
    busy(host)
    for _ in range(3):
        host.perf_event_open(A(config="cycles", pinned=True), pid=-1, cpu=0)
    leader = host.perf_event_open(A(config="cycles", disabled=True), pid=-1, cpu=0)
    sib = host.perf_event_open(A(config="cycles", disabled=True), pid=-1, cpu=0, group=leader)
    sib.enable()
    leader.enable()
    # one GP counter and the fixed counter are left; the group needs two GP counters
    assert leader.state == EventState.INACTIVE and sib.state == EventState.INACTIVE


def test_constraint_weight_order_and_fixed_first():
    # event A may use 0-1 (weight 2), event B only 0 (weight 1): B must get 0 even if A came first
    a = HwEvent(config=0, mask=0b11)
    b = HwEvent(config=0, mask=0b01)
    assert assign_counters([a, b], [None, None], 0xF) == [1, 0]
    instr = HwEvent(config=0, mask=0b1111 | (1 << 32))
    assert assign_counters([instr], [None], 0xF | (1 << 32)) == [32]


def test_fast_path_keeps_previous_counters():
    a = HwEvent(config=0, mask=0xF)
    b = HwEvent(config=0, mask=0xF)
    assert assign_counters([a, b], [3, 2], 0xF) == [3, 2]


def test_backtracking_only_for_overlap_constraints():
    # Linux fam15h shape: greedy puts X on 0 and Y then finds nothing; backtracking moves X
    x = HwEvent(config=0, mask=0b011, overlap=True)
    y = HwEvent(config=0, mask=0b011)
    z = HwEvent(config=0, mask=0b110)
    assert assign_counters([x, z, y], [None] * 3, 0b111) is not None
    x2 = HwEvent(config=0, mask=0b011)
    # without the overlap flag Linux does not backtrack: x->0, z->1, y finds nothing
    assert assign_counters([x2, z, y], [None] * 3, 0b111) is None
    # a case greedy cannot solve: equal weights, lowest-free choice blocks the last event
    p = HwEvent(config=0, mask=0b011)
    q = HwEvent(config=0, mask=0b110)
    r = HwEvent(config=0, mask=0b011)
    assert assign_counters([p, q, r], [None] * 3, 0b111) is None
    p_ov = HwEvent(config=0, mask=0b011, overlap=True)
    q_ov = HwEvent(config=0, mask=0b110, overlap=True)
    assert assign_counters([p_ov, q_ov, r], [None] * 3, 0b111) == [0, 2, 1]


def test_resource_exclusive_unless_same_key():
    a = HwEvent(config=0, mask=0, resources=(("lbr", "guest"),))
    b = HwEvent(config=0, mask=0xF, resources=(("lbr", "host:any"),))
    c = HwEvent(config=0, mask=0xF, resources=(("lbr", "host:any"),))
    assert assign_counters([a, b], [None, None], 0xF) is None
    assert assign_counters([b, c], [None, None], 0xF) is not None


def test_counting_read_is_exact_and_times_from_clock(host):
    ev = host.perf_event_open(A(config="instructions", pinned=True), pid=-1, cpu=1)
    t = host.spawn_task("w", cpu=1)
    t.execute(vpmu.Work(instructions=777_777, cpl=3))
    t.execute(vpmu.Work(instructions=222_223, cpl=0))
    host.advance(ns=2_000_000)
    c = ev.read()
    assert c.value == 1_000_000
    assert c.time_enabled == c.time_running == 2_000_000
    k = host.perf_event_open(A(config="instructions", exclude_user=True, pinned=True), pid=-1, cpu=1)
    t.execute(vpmu.Work(instructions=500, cpl=3))
    t.execute(vpmu.Work(instructions=300, cpl=0))
    host.advance(ns=1_000_000)
    assert k.read().value == 300


def test_task_event_follows_its_task_only(host):
    a = host.spawn_task("a", cpu=0)
    b = host.spawn_task("b", cpu=0)
    ev = host.perf_event_open(A(config="instructions"), pid=a.pid, cpu=-1)
    a.execute(vpmu.Work(instructions=9_000_000))
    b.execute(vpmu.Work(instructions=9_000_000))
    host.advance(ns=20_000_000)
    c = ev.read()
    assert c.value == 9_000_000
    assert c.time_enabled == c.time_running == 3_000_000


def test_sampling_overflow_point_is_exact(host):
    t = host.spawn_task("s", cpu=0)
    seen = []
    ev = host.perf.perf_event_open(
        A(config="instructions", sample_period=1000, pinned=True),
        pid=-1,
        cpu=0,
        overflow_handler=lambda e, overshoot: seen.append(overshoot),
    )
    t.execute(vpmu.Work(instructions=10_500))
    host.advance(ns=1_000_000)
    assert ev.samples == 10 and len(seen) == 10
    assert ev.read().value == 10_500


def test_disable_schedules_the_event_out_and_nothing_in(host):
    """__perf_event_disable (kernel/events/core.c): the event (a leader: its group,
    group_sched_out) goes out and OFF; no ctx_resched, so a flexible group waiting for a
    counter gets the freed one at the next mux rotation, not at the disable."""
    busy(host, ns=20_000_000)
    # toy/basic: 4 GP counters and a fixed one for instructions; 5 cycles events: one waits
    evs = [host.perf_event_open(A(config="cycles"), pid=-1, cpu=0) for _ in range(5)]
    waiting = [e for e in evs if e.state == EventState.INACTIVE]
    assert len(waiting) == 1
    active = next(e for e in evs if e.state == EventState.ACTIVE)
    n = host.perf.stats.reschedules
    active.disable()
    assert active.state == EventState.OFF
    assert waiting[0].state == EventState.INACTIVE  # the freed counter stays free
    assert host.perf.stats.reschedules == n
    host.advance(ns=host.perf.mux_interval_ns + 1)
    assert waiting[0].state == EventState.ACTIVE  # the rotation's reschedule takes it in
    assert host.perf.stats.rotations >= 1


def test_disabling_a_group_leader_takes_its_group_out(host):
    busy(host)
    leader = host.perf_event_open(A(config="cycles"), pid=-1, cpu=0)
    sib = host.perf_event_open(A(config="cycles"), pid=-1, cpu=0, group=leader)
    assert leader.state == sib.state == EventState.ACTIVE
    leader.disable()
    assert leader.state == EventState.OFF
    # group_sched_out: the sibling stops counting but stays enabled
    assert sib.state == EventState.INACTIVE and sib.idx is None
    before = sib.read()
    host.advance(ns=1_000_000)
    after = sib.read()
    assert after.value == before.value and after.time_running == before.time_running
    assert after.time_enabled > before.time_enabled
