"""The perf core: contexts, the four scheduling classes, ERROR/INACTIVE rules, multiplexing.

After kernel/events/core.c. One `PerfSubsystem` serves host perf (CPUs = host CPUs, port =
physical PMU) and guest perf (CPUs = vCPUs, port = the vCPU's MSR interface).

Priority (`ctx_resched` / `perf_event_sched_in`): per-CPU pinned > per-task pinned >
per-CPU flexible > per-task flexible. A pinned group that cannot get its counters goes to
ERROR and stays there until it is enabled again; a flexible group that cannot goes INACTIVE,
stops the flexible pass (`can_add_hw = 0`) and waits for rotation every mux interval.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from vpmu_core.errors import PerfError
from vpmu_core.logs import get_logger
from vpmu_core.perf.assign import assign_counters, fits_previous
from vpmu_core.perf.attr import EventState, PerfEventAttr, decode_hw_config
from vpmu_core.perf.driver import HwEvent, PerfDriver, RegisterPort
from vpmu_core.perf.event import OverflowHandler, PerfEvent

log = get_logger("vpmu.perf")

_OFF = EventState.OFF
_ACTIVE = EventState.ACTIVE
_T = TypeVar("_T")


class PerfCpu(Protocol):
    """What perf needs of a CPU (host CPU or vCPU)."""

    index: int
    port: RegisterPort
    current_task: Any | None

    def now_ns(self) -> int: ...


class CpuContext:
    """perf_cpu_context: the per-CPU event groups and what is loaded on the PMU."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.groups: list[PerfEvent] = []  # leaders, in rotation order
        self.active: list[PerfEvent] = []
        self.guest_loaded = False
        #: what the last full ctx_resched() settled on, while a second one would change
        #: nothing (see `_Settled`); None when unknown
        self.settled: _Settled | None = None
        #: set by perf_load_guest_context(): the settled outcome of the last full
        #: ctx_resched() before the guest context went in, for perf_put_guest_context() to
        #: restore (`_resume_plan`); cleared by any other reschedule of this CPU, and stale
        #: once the generation moves
        self.guest_resume: _Settled | None = None


class _SchedPlan:
    """What one ctx_resched() pass decides for a CPU: the events that get counters (in the
    order they were taken), their counters, the events left out, and the pass's flags
    (`can_add_hw` of perf_event_sched_in's flexible pass)."""

    __slots__ = (
        "avail",
        "guest_loaded",
        "chosen",
        "mapping",
        "hws",
        "prevs",
        "excluded",
        "can_add_hw",
        "cpu_pinned_active",
        "stop_group",
        "fixed_point",
    )

    def __init__(self, avail: int, guest_loaded: bool) -> None:
        self.avail = avail
        self.guest_loaded = guest_loaded
        self.chosen: list[PerfEvent] = []
        self.mapping: list[int | None] = []
        self.hws: list[HwEvent] = []
        self.prevs: list[int | None] = []
        self.excluded: list[PerfEvent] = []
        self.can_add_hw = True
        self.cpu_pinned_active = False
        #: the flexible group whose failure stopped the flexible pass (can_add_hw = 0)
        self.stop_group: PerfEvent | None = None
        #: whether the same pass run again on the state it leaves would decide the same
        self.fixed_point = True


class _Settled:
    """The outcome of the last full ctx_resched() of a CPU, kept so that installing one more
    flexible group (`_install_plan`) can decide without walking every group again.

    Valid while `gen` equals the subsystem's generation (bumped by every change to a
    context that is not followed by a reschedule of that CPU), the CPU runs the same task,
    the guest context is as it was, and the chosen events still hold `mapping`."""

    __slots__ = (
        "gen",
        "task",
        "guest_loaded",
        "now_ns",
        "chosen",
        "hws",
        "mapping",
        "stop_group",
        "stop_class",
        "cpu_pinned_active",
        "task_flexible_live",
    )

    def __init__(self, gen: int, task: Any | None, plan: _SchedPlan, now_ns: int, task_flexible_live: bool) -> None:
        self.gen = gen
        self.task = task
        self.guest_loaded = plan.guest_loaded
        self.now_ns = now_ns
        self.chosen = list(plan.chosen)
        self.hws = list(plan.hws)
        self.mapping = list(plan.mapping)
        self.stop_group = plan.stop_group
        #: 2: the flexible pass stopped among the per-CPU flexible groups, 3: among the task's
        self.stop_class = 3 if plan.stop_group is not None and plan.stop_group.task is not None else 2
        self.cpu_pinned_active = plan.cpu_pinned_active
        #: whether a live (enabled, open) flexible group of the current task follows the
        #: per-CPU flexible ones in perf_event_sched_in order
        self.task_flexible_live = task_flexible_live


class PerfStats:
    """perf API activity of one perf instance (reported under `perf_api`)."""

    __slots__ = ("opens", "releases", "enables", "disables", "reschedules", "rotations", "ipis", "reprograms")

    def __init__(self) -> None:
        self.opens = self.releases = self.enables = self.disables = 0
        self.reschedules = self.rotations = self.ipis = self.reprograms = 0

    def as_dict(self) -> dict[str, int]:
        return {s: getattr(self, s) for s in self.__slots__}


class PerfSubsystem:
    """perf for one set of CPUs over one driver. See module docstring."""

    def __init__(
        self,
        driver: PerfDriver,
        cpus: Sequence[PerfCpu],
        *,
        name: str = "host",
        task_lookup: Callable[[int], Any | None] = lambda pid: None,
        mux_interval_ns: int = 4_000_000,
    ) -> None:
        self.driver = driver
        self.cpus = cpus
        self.name = name
        self.task_lookup = task_lookup
        self.mux_interval_ns = mux_interval_ns
        self.ctx = [CpuContext(c.index) for c in cpus]
        self.events: list[PerfEvent] = []
        self.stats = PerfStats()
        self._next_id = 1
        #: generation of the contexts: bumped by every change to what a CPU would schedule
        #: that is not followed by a reschedule of that CPU (it invalidates `ctx.settled`)
        self._gen = 0
        #: optional veto on open: (attr, pid, cpu) -> errno or None (mode hook
        #: `vpmu_host_perf_event_open`, e.g. mediated refuses !exclude_guest events)
        self.open_filter: Callable[[PerfEventAttr, int, int], int | None] | None = None
        #: called after the set of active events of a CPU changed: (cpu index)
        self.on_resched: list[Callable[[int], None]] = []
        #: called for the cost of an IPI to a CPU (the host charges it)
        self.on_ipi: Callable[[int], None] | None = None
        self._avail = [driver.counter_mask(c.port) for c in cpus]
        #: a physical port's `batched()` (one PMU decode per reschedule); a vCPU port has
        #: none: each guest WRMSR retires and counts under the state of the moment
        self._batch: list[Callable[[], Any] | None] = [getattr(c.port, "batched", None) for c in cpus]
        #: the driver's optional perf_pmu_disable()/perf_pmu_enable() bracket (`pmu_disable`,
        #: `pmu_enable`: the global control written once per bracket, not per start/stop),
        #: used only inside a physical port's batch (a guest driver's every WRMSR is an exit)
        dis, en = getattr(driver, "pmu_disable", None), getattr(driver, "pmu_enable", None)
        self._pmu_bracket: tuple[Callable[[RegisterPort], None], Callable[[RegisterPort], None]] | None = (
            (dis, en) if dis is not None and en is not None else None
        )
        #: optional timeline recorder (vpmu trace): counters(perf, cpu, t_ns, {idx: event})
        self.tracer: Any = None
        #: observer of every enabled/running transition (the VM-exit fast-forward records
        #: when, inside an exit, each event starts and stops ticking): (event, enabled, running)
        self.ticking_log: Callable[[PerfEvent, bool, bool], None] | None = None
        #: ground truth of what an event should count: event -> cumulative count now
        self.truth_source: Callable[[PerfEvent], int] | None = None

    # ---- helpers ----------------------------------------------------------------------
    def port(self, cpu: int) -> RegisterPort:
        return self.cpus[cpu].port

    def now_ns_for(self, ev: PerfEvent) -> int:
        if ev.task is not None:
            running = getattr(ev.task, "running_on", None)
            if running is not None:
                return self.cpus[running].now_ns()
            return max(ev._tstamp, getattr(ev.task, "last_ns", 0))
        return self.cpus[ev.cpu].now_ns()

    # ---- open / enable / disable / release ---------------------------------------------
    def perf_event_open(
        self,
        attr: PerfEventAttr,
        pid: int = -1,
        cpu: int = -1,
        group: PerfEvent | None = None,
        *,
        overflow_handler: OverflowHandler | None = None,
        owner: str = "user",
        local: bool = False,
        hw: HwEvent | None = None,
    ) -> PerfEvent:
        """perf_event_open(2). Errors raise PerfError with the syscall's errno.

        In-kernel users (KVM) may pass a prebuilt `hw` event, e.g. the counterless vLBR event
        (perf_event_create_kernel_counter with INTEL_FIXED_VLBR_EVENT)."""
        if pid == -1 and cpu == -1:
            raise PerfError(errno.EINVAL, "pid == -1 and cpu == -1 is invalid (perf_event_open(2))")
        if cpu < -1 or cpu >= len(self.cpus):
            raise PerfError(errno.EINVAL, f"cpu {cpu} out of range 0..{len(self.cpus) - 1}")
        task = None
        if pid != -1:
            if pid == 0:
                raise PerfError(errno.EINVAL, "pid 0 (calling process) has no meaning here; pass task.pid")
            task = self.task_lookup(pid)
            if task is None:
                raise PerfError(errno.ESRCH, f"no task with pid {pid}")
        if attr.exclude_host and attr.exclude_guest:
            # both excluded counts nothing; the kernel accepts it, we keep it legal too
            pass
        if hw is None:
            attr = decode_hw_config(attr)  # the PERF_COUNT_HW_* number, once for every vendor
        if self.open_filter is not None:
            err = self.open_filter(attr, pid, cpu)
            if err:
                raise PerfError(err, "refused by the virtualization mode")
        if group is not None:
            if group.closed or group.leader is not group:
                raise PerfError(errno.EINVAL, "group_fd must be an open group leader")
            if group.cpu != cpu or group.task is not task:
                raise PerfError(errno.EINVAL, "a group's events must share pid and cpu")
        port = self.cpus[cpu if cpu >= 0 else 0].port
        if hw is None:
            hw = self.driver.hw_event(attr, port)
        ev = PerfEvent(self, attr, hw, pid, cpu, task, group, overflow_handler, owner, self._next_id)
        self._next_id += 1
        ev._tstamp = self.now_ns_for(ev)
        self.events.append(ev)
        self.stats.opens += 1
        if group is not None:
            group.siblings.append(ev)
        elif task is not None:
            task.perf_events.append(ev)
        else:
            self.ctx[cpu].groups.append(ev)
        log.debug("perf.open", perf=self.name, eid=ev.id, label=attr.label(), pid=pid, cpu=cpu, owner=owner)
        if attr.disabled:
            self._gen += 1
        else:
            # perf_install_in_context(): a new group leader is appended to its context and
            # goes in without re-deciding the others where that changes nothing (`_install_plan`)
            self._enable(ev, local, installing=group is None)
        return ev

    def enable(self, ev: PerfEvent, local: bool = False) -> None:
        self._enable(ev, local)

    def _enable(self, ev: PerfEvent, local: bool, installing: bool = False) -> None:
        """Ground truth starts once the enable has run: the instructions of the driver that
        program the counter (a guest driver's WRMSRs retire) precede counting and are not
        the event's to count. The counting rule may still give the event the one
        instruction that enabled it (KVM counts an emulated WRMSR after it took effect)."""
        self.stats.enables += 1
        opening = ev.state == EventState.OFF
        if ev.state in (EventState.OFF, EventState.ERROR):
            ev.state = EventState.INACTIVE
            ev.blocked_by = None
            if not self._resched_for(ev, local, ev if installing else None):
                self._gen += 1
        if opening and self.truth_source is not None:
            ev.truth_start = self.truth_source(ev)
            ev.truth_open = True

    def disable(self, ev: PerfEvent, local: bool = False) -> None:
        """perf_event_disable() -> __perf_event_disable() (kernel/events/core.c): the event
        goes out, a group leader with its whole group (`group_sched_out`, the siblings stay
        enabled: INACTIVE), any other event alone (`event_sched_out`), and it goes OFF. Nothing
        else is rescheduled: a group waiting for the freed counter gets it at the next
        ctx_resched or mux rotation (`perf_rotate_context`), not here. An event that is OFF
        or in ERROR is left as it is (`_perf_event_disable`: `state <= PERF_EVENT_STATE_OFF`
        returns): a pinned event that failed stays in ERROR until an enable clears it."""
        self.stats.disables += 1
        if ev.state in (EventState.OFF, EventState.ERROR):
            return
        cpu = ev.active_cpu
        if cpu is not None:
            members = ev.group if ev.leader is ev else [ev]
            self._quietly(cpu, self._sched_out_all, members)
        ev._set_ticking(self.now_ns_for(ev), False, False)
        ev.state = EventState.OFF
        if ev.truth_open and self.truth_source is not None:
            ev.truth += self.truth_source(ev) - ev.truth_start
            ev.truth_open = False
        if cpu is not None:
            self._maybe_ipi(cpu, local)
            if self.tracer is not None:
                self.tracer.counters(
                    self.name,
                    cpu,
                    self.cpus[cpu].now_ns(),
                    {e.idx: e for e in self.ctx[cpu].active if e.idx is not None},
                )
        # no reschedule follows: the install record of the last full one is stale (perf/assign)
        self._gen += 1

    def pause(self, ev: PerfEvent) -> int:
        """perf_event_pause(event, reset=true): disable, return the count and zero it."""
        self.disable(ev, local=True)
        value = ev.count
        ev.count = 0
        return value

    def release(self, ev: PerfEvent, local: bool = False) -> None:
        self.stats.releases += 1
        for sib in list(ev.siblings):
            self.release(sib, local)
        self.disable(ev, local)
        ev.closed = True
        if ev.leader is not ev:
            ev.leader.siblings.remove(ev)
        elif ev.task is not None:
            ev.task.perf_events.remove(ev)
        else:
            self.ctx[ev.cpu].groups.remove(ev)
        self.events.remove(ev)
        self._gen += 1

    def set_period(self, ev: PerfEvent, period: int) -> None:
        """perf_event_period(): takes effect at once on a running counter (the core stops the
        event with PERF_EF_UPDATE, zeroes period_left and restarts it with PERF_EF_RELOAD)."""
        ev.period = period
        ev.period_left = period
        if ev.state == EventState.ACTIVE and ev.idx is not None:
            self._update(ev)
            ev.period_left = 0
            self._set_period(ev)
            self.stats.reprograms += 1

    def reprogram_in_place(self, ev: PerfEvent, period_of: Callable[[int], int]) -> int | None:
        """KVM's reuse of an unchanged event (arch/x86/kvm/pmu.c `reprogram_counter`:
        `pmc_pause_counter` = perf_event_pause(reset), then `pmc_resume_counter` =
        perf_event_period + perf_event_enable) done in place: the event stops at its counter
        (x86_pmu_stop, PERF_EF_UPDATE), the paused count is taken and zeroed, `period_of(count)`
        gives the new sample period, and the event restarts at the same counter
        (x86_pmu_start, PERF_EF_RELOAD). Returns the paused count.

        Exactly what `pause` + `set_period` + `enable` do here, the enable's reschedule
        (ctx_resched) included, when that reschedule cannot move anything: a live
        single-event group on a physical PMU, no guest context loaded, and every other group
        this CPU would offer to merge_sched_in already ACTIVE (nothing waits for the freed
        counter, so each keeps its counter through x86_schedule_events' fast path and the
        event gets its own back). Otherwise returns None and changes nothing: the caller
        makes the three calls. The caller guarantees no time passes between the three calls
        (KVM is inside an exit). The `on_resched` observers are told after the step."""
        cpu = ev.active_cpu
        if cpu is None or ev.state != _ACTIVE or ev.idx is None or ev.siblings or ev.leader is not ev:
            return None
        batch = self._batch[cpu]
        if batch is None or self.tracer is not None or self.ctx[cpu].guest_loaded:
            return None
        if ev.task is not None:
            if getattr(ev.task, "running_on", None) != cpu:
                return None
        elif ev.cpu != cpu:
            return None
        if not self._nothing_waits(cpu):
            return None
        value = self._quietly(cpu, self._reprogram_in_place, ev, cpu, period_of)
        self._gen += 1  # the context changed without a full reschedule (perf/assign's record)
        for fn in self.on_resched:
            fn(cpu)
        return value

    def _quietly(self, cpu: int, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(*args)` as one register sequence of `cpu`'s PMU: on a physical port, inside its
        batch (one decode) and, where the driver has them, its perf_pmu_disable() /
        perf_pmu_enable() bracket (the global control written once). With no host event
        nothing starts or stops, so the bracket would only cost calls."""
        batch = self._batch[cpu]
        if batch is None:
            return fn(*args)
        with batch():
            bracket = self._pmu_bracket
            if bracket is None or not self.events:
                return fn(*args)
            port = self.cpus[cpu].port
            bracket[0](port)
            try:
                return fn(*args)
            finally:
                bracket[1](port)

    def _sched_out_all(self, members: list[PerfEvent]) -> None:
        for e in members:
            self._sched_out(e)

    def _nothing_waits(self, cpu: int) -> bool:
        """Every enabled member of every group `_ordered_groups(cpu)` would offer is ACTIVE on
        `cpu`, and they are all that is active there: a reschedule keeps them as they are."""
        ctx = self.ctx[cpu]
        task = self.cpus[cpu].current_task
        n = 0
        for groups, task_groups in ((ctx.groups, False), (task.perf_events if task is not None else (), True)):
            for g in groups:
                if g.closed or g.state <= _OFF or (task_groups and g.cpu not in (-1, cpu)):
                    continue
                for e in (g, *g.siblings) if g.siblings else (g,):
                    if e.state > _OFF:
                        if e.state != _ACTIVE or e.active_cpu != cpu:
                            return False
                        n += 1
        return n == len(ctx.active)

    def _reprogram_in_place(self, ev: PerfEvent, cpu: int, period_of: Callable[[int], int]) -> int:
        """The state changes of disable, the pause, set_period and enable + resched, in their
        order, with what the reschedule would find already decided."""
        now = self.cpus[cpu].now_ns()
        stats = self.stats
        # perf_event_pause -> __perf_event_disable: the event alone goes out
        stats.disables += 1
        self._sched_out(ev)
        ev._set_ticking(now, False, False)
        ev.state = EventState.OFF
        truth = self.truth_source
        if ev.truth_open and truth is not None:
            ev.truth += truth(ev) - ev.truth_start
            ev.truth_open = False
        value = ev.count
        ev.count = 0
        # perf_event_period on an OFF event: the new period only
        period = period_of(value)
        ev.period = period
        ev.period_left = period
        # perf_event_enable -> ctx_resched: every other event stays where it is
        # (merge_sched_in of each, x86_pmu_enable: nothing moves, their times restart at
        # `now`) and the event gets its previous counter back
        stats.enables += 1
        ev.state = EventState.INACTIVE
        ev.blocked_by = None
        stats.reschedules += 1
        for e in self.ctx[cpu].active:
            e.blocked_by = None
            e._set_ticking(now, True, True)
        self._sched_in(ev, cpu, ev.prev_idx)
        ev._set_ticking(now, True, True)
        if truth is not None:
            ev.truth_start = truth(ev)
            ev.truth_open = True
        return value

    def _resched_for(self, ev: PerfEvent, local: bool, installed: PerfEvent | None = None) -> bool:
        """Reschedule the CPU `ev`'s group is on, if it is on one; whether it was."""
        leader = ev.leader
        if leader.task is not None:
            cpu = getattr(leader.task, "running_on", None)
            if cpu is None:
                return False
        else:
            cpu = leader.cpu
        self._maybe_ipi(cpu, local)
        self.resched(cpu, installed)
        return True

    def _maybe_ipi(self, cpu: int, local: bool) -> None:
        if not local:
            self.stats.ipis += 1
            if self.on_ipi is not None:
                self.on_ipi(cpu)

    # ---- context switch -------------------------------------------------------------------
    def sched_task(self, cpu: int, prev: Any | None, nxt: Any | None) -> None:
        """Task switch on `cpu`: the previous task's events go out, the next's come in."""
        now = self.cpus[cpu].now_ns()
        if prev is not None:
            for leader in prev.perf_events:
                for e in leader.group:
                    if e.state == EventState.ACTIVE:
                        self._sched_out(e)
                    e._set_ticking(now, False, False)
            prev.last_ns = now
        if prev is not None or (nxt is not None and nxt.perf_events):
            self.resched(cpu)
        else:
            self._gen += 1

    # ---- the scheduler ---------------------------------------------------------------------
    def resched(self, cpu: int, installed: PerfEvent | None = None, *, resume: _Settled | None = None) -> None:
        """ctx_resched(): recompute the active set of `cpu` in priority order, then tell the
        observers. On a physical port the register writes of the switch are one decode.

        `installed`: the group leader __perf_install_in_context() just added to this CPU's
        contexts; where the last full pass tells what a new one would decide for every other
        group, only the new group is decided (`_install_plan`), with the same outcome.
        `resume`: perf_put_guest_context()'s record of the pass before the guest context
        went in (`_resume_plan`)."""
        self.stats.reschedules += 1
        self.ctx[cpu].guest_resume = None  # this pass is not the one load_guest_context saw
        # ctx_resched(): perf_pmu_disable() ... perf_pmu_enable()
        self._quietly(cpu, self._schedule, cpu, installed, resume)
        for fn in self.on_resched:
            fn(cpu)
        if self.tracer is not None:
            self.tracer.counters(
                self.name, cpu, self.cpus[cpu].now_ns(), {e.idx: e for e in self.ctx[cpu].active if e.idx is not None}
            )

    def _schedule(self, cpu: int, installed: PerfEvent | None = None, resume: _Settled | None = None) -> None:
        """ctx_resched() after ctx_sched_out(): every group, in `perf_event_sched_in` order, is
        offered to `merge_sched_in`; then `x86_pmu_enable` applies the new active set.
        An `installed` group may be decided alone (`_install_plan`), a `resume` restored
        (`_resume_plan`)."""
        ctx = self.ctx[cpu]
        settled, ctx.settled = ctx.settled, None  # unknown until the new set is applied
        if resume is not None:
            plan = self._resume_plan(cpu, resume)
            if plan is not None:
                self._apply(plan, cpu)
                resume.now_ns = self.cpus[cpu].now_ns()
                ctx.settled = resume
                return
        if installed is not None and settled is not None:
            plan = self._install_plan(cpu, installed, settled)
            if plan is not None:
                self._apply(plan, cpu)
                settled.now_ns = self.cpus[cpu].now_ns()
                ctx.settled = settled
                return
        plan = _SchedPlan(self._avail[cpu], ctx.guest_loaded)
        merge_sched_in = self._merge_sched_in
        classes = self._classes(cpu)
        for groups in classes:
            for g in groups:
                merge_sched_in(plan, g, cpu)
        self._apply(plan, cpu)
        task_flexible_live = any(not g.closed and g.state > _OFF for g in classes[3])
        ctx.settled = (
            _Settled(self._gen, self.cpus[cpu].current_task, plan, self.cpus[cpu].now_ns(), task_flexible_live)
            if plan.fixed_point
            else None
        )

    def _classes(self, cpu: int) -> tuple[list[PerfEvent], list[PerfEvent], list[PerfEvent], list[PerfEvent]]:
        """ctx_resched() / perf_event_sched_in(): the four classes in priority order, per-CPU
        pinned, per-task pinned, per-CPU flexible, per-task flexible; within a class,
        rotation order (the task's groups bound to another CPU are not this CPU's)."""
        groups = self.ctx[cpu].groups
        task = self.cpus[cpu].current_task
        task_groups = [g for g in task.perf_events if g.cpu in (-1, cpu)] if task is not None else []
        return (
            [g for g in groups if g.attr.pinned],
            [g for g in task_groups if g.attr.pinned],
            [g for g in groups if not g.attr.pinned],
            [g for g in task_groups if not g.attr.pinned],
        )

    def _install_plan(self, cpu: int, ev: PerfEvent, s: _Settled) -> _SchedPlan | None:
        """__perf_install_in_context() -> ctx_resched() for one new flexible group leader `ev`,
        appended to its context (so last of its class), decided alone: the plan a full
        pass would make, or None when only a full pass can tell. Updates `s` to the
        outcome.

        It can tell when the last full pass on this CPU (`ctx.settled`) is still what a
        pass over the groups before `ev` would decide: then a guest context that is loaded
        keeps `ev` out; a flexible pass that already stopped before `ev`
        (merge_sched_in(): can_add_hw == 0) leaves it INACTIVE, waiting for rotation, and
        nothing else moves; otherwise, if no live group follows `ev`, `group_sched_in()`
        tries it against the counters the chosen events hold (x86_schedule_events(), fast
        path first) and the groups before it keep what they have. The groups left out
        before keep their state and their (lazily synced) times; the chosen ones are
        applied as a full pass applies them."""
        ctx = self.ctx[cpu]
        if (
            s.gen != self._gen
            or ev.attr.pinned
            or ev.siblings
            or s.task is not self.cpus[cpu].current_task
            or s.guest_loaded != ctx.guest_loaded
            or len(ctx.active) != len(s.chosen)
        ):
            return None
        if ev.task is not None:
            if ev.task is not s.task or ev.cpu not in (-1, cpu):
                return None
            cls = 3
        else:
            cls = 2
        for e, idx in zip(s.chosen, s.mapping, strict=True):
            if e.closed or e.state != _ACTIVE or e.active_cpu != cpu or e.idx != idx:
                return None
        stop = s.stop_group
        if stop is not None and (stop.closed or stop.state != EventState.INACTIVE):
            return None
        if self.cpus[cpu].now_ns() < s.now_ns:
            return None  # lazily synced times need a clock that does not go back
        plan = _SchedPlan(self._avail[cpu], s.guest_loaded)
        plan.chosen = list(s.chosen)
        plan.hws = list(s.hws)
        plan.prevs = list(s.mapping)
        plan.mapping = list(s.mapping)
        plan.cpu_pinned_active = s.cpu_pinned_active
        if s.guest_loaded:
            plan.excluded.append(ev)
            return plan
        if stop is not None and s.stop_class <= cls:
            ev.blocked_by = "multiplexed"
            plan.excluded.append(ev)
            return plan
        if stop is not None or (cls == 2 and s.task_flexible_live):
            return None
        if self._group_sched_in(plan, [ev], cpu):
            s.chosen, s.hws, s.mapping = list(plan.chosen), list(plan.hws), list(plan.mapping)
            s.task_flexible_live = s.task_flexible_live or cls == 3
        else:
            # merge_sched_in()'s flexible failure; run again, the same trial fails the same way
            ev.blocked_by = "host per-CPU pinned event" if s.cpu_pinned_active else "counter contention"
            plan.excluded.append(ev)
            plan.can_add_hw = False
            s.stop_group = ev
            s.stop_class = cls
        return plan

    def _resume_plan(self, cpu: int, s: _Settled) -> _SchedPlan | None:
        """perf_put_guest_context() -> ctx_resched() right after perf_load_guest_context()
        scheduled everything out, with nothing changed in between: the plan of the full
        pass the load saw (`s`), or None when only a full pass can tell.

        It can tell while `s` is current (same generation, task, and no other reschedule
        since the load: `guest_resume` is cleared by every one): the load left every event
        out with `prev_idx` = the counter it had, so each group `merge_sched_in` offers gets
        the counters `s` gave it (x86_schedule_events' fast path over the same events and
        previous counters), a group `s` left out is left out again (`s` is a fixed point:
        the same failure fails the same way), and a pinned group `s` put in ERROR is
        skipped. The groups out are those that are live and not chosen, in
        perf_event_sched_in order; their `blocked_by` is still what `s`'s pass set."""
        ctx = self.ctx[cpu]
        if s.gen != self._gen or s.guest_loaded or s.task is not self.cpus[cpu].current_task or ctx.active:
            return None
        chosen = s.chosen
        inactive = EventState.INACTIVE
        leaders: set[int] = set()
        for e, idx in zip(chosen, s.mapping, strict=True):
            if e.closed or e.state != inactive or (idx is not None and e.prev_idx != idx):
                return None
            leaders.add(id(e.leader))
        # every live member of a chosen event's group, and nothing else, is chosen: the
        # chosen events (distinct, all live) lie in those groups, so counting them suffices
        excluded: list[PerfEvent] = []
        n = 0
        for groups in self._classes(cpu):
            for g in groups:
                if g.closed or g.state <= _OFF:
                    continue
                members = [e for e in g.group if e.state > _OFF] if g.siblings else [g]
                if id(g) in leaders:
                    n += len(members)
                else:
                    excluded.extend(members)
        if n != len(chosen):
            return None
        plan = _SchedPlan(self._avail[cpu], False)
        plan.chosen = list(chosen)
        plan.hws = list(s.hws)
        plan.prevs = list(s.mapping)
        plan.mapping = list(s.mapping)
        plan.excluded = excluded
        plan.cpu_pinned_active = s.cpu_pinned_active
        plan.stop_group = s.stop_group
        plan.can_add_hw = s.stop_group is None
        return plan

    def _merge_sched_in(self, plan: _SchedPlan, g: PerfEvent, cpu: int) -> None:
        """merge_sched_in(): a group that is OFF or in ERROR is skipped; while a mediated guest
        context is loaded every host group stays out; a flexible group after the flexible
        pass stopped (`group_can_go_on()` with can_add_hw == 0) waits for rotation. Otherwise
        it tries for counters (`group_sched_in`); a pinned group that cannot get them goes
        to ERROR, a flexible one stays INACTIVE and stops the flexible pass."""
        if g.closed or g.state <= _OFF:
            return
        members = [e for e in g.group if e.state > _OFF]
        if plan.guest_loaded:
            plan.excluded.extend(members)
            return
        pinned = g.attr.pinned
        if not pinned and not plan.can_add_hw:
            for e in members:
                e.blocked_by = "multiplexed"
            plan.excluded.extend(members)
            return
        if self._group_sched_in(plan, members, cpu):
            if pinned and g.task is None:
                plan.cpu_pinned_active = True
            return
        cause = "host per-CPU pinned event" if plan.cpu_pinned_active else "counter contention"
        if pinned:
            self._pinned_error(members, cpu, cause)
        else:
            for e in members:
                e.blocked_by = cause
            plan.excluded.extend(members)
            plan.can_add_hw = False
            plan.stop_group = g
            # the pass run again sees the chosen events at their new counters: it decides
            # the same unless this group then fits x86_schedule_events()' fast path
            hws = plan.hws + [e.hw for e in members]
            prevs = plan.mapping + [e.prev_idx for e in members]
            plan.fixed_point = not fits_previous(hws, prevs, plan.avail)

    def _group_sched_in(self, plan: _SchedPlan, members: list[PerfEvent], cpu: int) -> bool:
        """group_sched_in() as one PMU transaction: x86_pmu_commit_txn() runs
        x86_schedule_events() over the events already taken plus this group's, each with
        the counter it had (on this CPU now, else last time). All or nothing."""
        member_prev = [e.idx if (e.state == _ACTIVE and e.active_cpu == cpu) else e.prev_idx for e in members]
        trial = assign_counters(plan.hws + [e.hw for e in members], plan.prevs + member_prev, plan.avail)
        if trial is None:
            return False
        plan.chosen.extend(members)
        plan.hws.extend(e.hw for e in members)
        plan.prevs.extend(member_prev)
        plan.mapping = trial
        return True

    def _pinned_error(self, members: list[PerfEvent], cpu: int, cause: str) -> None:
        """merge_sched_in()'s pinned failure: perf_event_set_state(PERF_EVENT_STATE_ERROR);
        the group stops counting until it is enabled again."""
        for e in members:
            if e.state == _ACTIVE:
                self._sched_out(e)
            e.state = EventState.ERROR
            e.blocked_by = cause
            e._set_ticking(self.cpus[cpu].now_ns(), False, False)
            log.debug("perf.pinned_error", perf=self.name, eid=e.id, cpu=cpu, cause=cause)

    def _apply(self, plan: _SchedPlan, cpu: int) -> None:
        """x86_pmu_enable(): everything that leaves or moves goes out first (x86_pmu_stop of
        each event whose counter changed, `match_prev_assignment`), then the groups left out
        stop running (still enabled unless a guest context is loaded), then the new set comes
        in at its counters (x86_pmu_start) and runs."""
        ctx = self.ctx[cpu]
        chosen, mapping = plan.chosen, plan.mapping
        new_idx = {id(e): mapping[i] for i, e in enumerate(chosen)}
        for e in list(ctx.active):
            if id(e) not in new_idx or new_idx[id(e)] != e.idx:
                self._sched_out(e)
        now = self.cpus[cpu].now_ns()
        enabled = not plan.guest_loaded
        for e in plan.excluded:
            if e.state == _ACTIVE:
                self._sched_out(e)
            e._set_ticking(now, enabled, False)
        for i, e in enumerate(chosen):
            if e.state != _ACTIVE:
                self._sched_in(e, cpu, mapping[i])
            e.blocked_by = None
            e._set_ticking(now, True, True)

    def _sched_in(self, e: PerfEvent, cpu: int, idx: int | None) -> None:
        e.state = EventState.ACTIVE
        e.active_cpu = cpu
        e.idx = idx
        ctx = self.ctx[cpu]
        ctx.active.append(e)
        if idx is not None:
            e.prev_idx = idx
            e._mask = (1 << self.driver.width(self.port(cpu), idx)) - 1
            # x86_pmu_start(PERF_EF_RELOAD) -> x86_perf_event_set_period(), its answer ignored
            start = (-_hw_left(e, _rearm(e)[0])) & e._mask if e.period else 0
            self.driver.start(self.port(cpu), e.hw, idx, start)
            e._start_raw = start
            self.stats.reprograms += 1

    def _sched_out(self, e: PerfEvent) -> None:
        cpu = e.active_cpu
        if e.state != EventState.ACTIVE or cpu is None:
            return
        if e.idx is not None:
            # x86_pmu_stop(PERF_EF_UPDATE) -> x86_perf_event_update(): period_left may go <= 0
            raw = self.driver.stop(self.port(cpu), e.hw, e.idx)
            delta = (raw - e._start_raw) & e._mask
            e.count += delta
            if e.period:
                e.period_left -= delta
        e._set_ticking(self.cpus[cpu].now_ns(), True, False)
        e.state = EventState.INACTIVE
        self.ctx[cpu].active.remove(e)
        e.idx = None
        e.active_cpu = None

    # ---- multiplexing ----------------------------------------------------------------------
    def needs_rotation(self, cpu: int) -> bool:
        ctx = self.ctx[cpu]
        task = self.cpus[cpu].current_task
        groups = ctx.groups + (task.perf_events if task is not None else [])
        return any(
            not g.attr.pinned and g.state == EventState.INACTIVE and g.blocked_by is not None and not g.closed
            for g in groups
        )

    def rotate(self, cpu: int) -> bool:
        """perf_rotate_context(): move the first flexible group of the CPU and task
        contexts to the tail, then reschedule. Returns whether it rotated."""
        if not self.needs_rotation(cpu):
            return False
        self.stats.rotations += 1
        ctx = self.ctx[cpu]
        _rotate_flexible(ctx.groups)
        task = self.cpus[cpu].current_task
        if task is not None:
            _rotate_flexible(task.perf_events)
        self.resched(cpu)
        return True

    # ---- overflow ------------------------------------------------------------------------
    def active_event(self, cpu: int, idx: int) -> PerfEvent | None:
        for e in self.ctx[cpu].active:
            if e.idx == idx:
                return e
        return None

    def handle_overflow(self, cpu: int, idx: int, overshoot: int = 0) -> bool:
        """The PMI for counter `idx`, whose overflow status bit is set (intel_pmu_handle_irq's
        loop over GLOBAL_STATUS): acknowledge it, then `intel_pmu_save_and_restart()`.
        `overshoot` is informational: the count comes from the counter itself. Returns False
        if no event owns the counter."""
        e = self.active_event(cpu, idx)
        if e is None:
            return False
        self.driver.ack(self.port(cpu), idx)
        self._overflowed(e)
        return True

    def handle_irq(self, cpu: int) -> int:
        """x86_pmu_handle_irq() for a PMU whose handler finds overflows by the counters' sign
        bit (the guest kernel's handler here): each active sampling counter is read once
        (`x86_perf_event_update`); one that is still negative has not overflowed. Returns
        the number of samples taken."""
        taken = 0
        port = self.port(cpu)
        for e in list(self.ctx[cpu].active):
            if e.state != EventState.ACTIVE or e.idx is None or not e.period:
                continue
            raw = self._update(e)
            if raw >> (e._mask.bit_length() - 1) & 1:
                continue
            self.driver.ack(port, e.idx)
            taken += self._restart(e)
        return taken

    def _overflowed(self, e: PerfEvent) -> None:
        if e.period:
            self._update(e)
            self._restart(e)
        elif e.overflow_handler is not None:
            e.overflow_handler(e, 0)

    def _restart(self, e: PerfEvent) -> int:
        """Re-arm after an overflow; a sample (and the overflow handler) only if a period
        really elapsed (x86_perf_event_set_period's return value gates perf_event_overflow)."""
        if not self._set_period(e):
            return 0
        e.samples += 1
        if e.overflow_handler is not None:
            e.overflow_handler(e, -e.period_left % e.period if e.period else 0)
        return 1

    def _update(self, e: PerfEvent) -> int:
        """x86_perf_event_update(): fold the counter's delta into the count and take it from
        period_left. Returns the raw counter value."""
        raw = self.driver.read(self.port(e.active_cpu), e.idx)  # type: ignore[arg-type]
        delta = (raw - e._start_raw) & e._mask
        e.count += delta
        e._start_raw = raw
        if e.period:
            e.period_left -= delta
        return raw

    def _set_period(self, e: PerfEvent) -> bool:
        """x86_perf_event_set_period(): re-arm the counter at -left; True if a period elapsed."""
        left, elapsed = _rearm(e)
        start = (-_hw_left(e, left)) & e._mask
        self.driver.write(self.port(e.active_cpu), e.idx, start)  # type: ignore[arg-type]
        e._start_raw = start
        return elapsed

    # ---- mediated vPMU support (perf_load_guest_context / perf_put_guest_context) ----------
    def load_guest_context(self, cpu: int, error_include_guest: bool = False) -> None:
        """perf_load_guest_context(): schedule out every host event of this PMU while the
        guest's PMU state is loaded; their enabled time stops (the `timeguest` clock).
        `error_include_guest` reproduces RFC v1: events without exclude_guest go to ERROR
        and stay there."""
        ctx = self.ctx[cpu]
        if not ctx.guest_loaded:
            ctx.guest_loaded = True
            if error_include_guest:
                task = self.cpus[cpu].current_task
                groups = ctx.groups + (task.perf_events if task is not None else [])
                for g in groups:
                    if not g.attr.exclude_guest and g.state not in (EventState.OFF, EventState.ERROR):
                        for e in g.group:
                            self._sched_out(e)
                            e.state = EventState.ERROR
                            e.blocked_by = "mediated vPMU (RFC v1): !exclude_guest event"
                            e._set_ticking(self.cpus[cpu].now_ns(), False, False)
                pre = None  # the ERROR transitions above are no reschedule's outcome
            else:
                pre = ctx.settled
            self.resched(cpu)
            if pre is not None and pre.gen == self._gen and not pre.guest_loaded:
                ctx.guest_resume = pre

    def put_guest_context(self, cpu: int) -> None:
        """perf_put_guest_context(): the host events come back (ctx_resched)."""
        ctx = self.ctx[cpu]
        if ctx.guest_loaded:
            ctx.guest_loaded = False
            self.resched(cpu, resume=ctx.guest_resume)

    def truth_of(self, ev: PerfEvent) -> int:
        """What `ev` should have counted while enabled (ground truth), so far."""
        if self.truth_source is None:
            return 0
        extra = self.truth_source(ev) - ev.truth_start if ev.truth_open else 0
        return ev.truth + extra


def _rearm(e: PerfEvent) -> tuple[int, bool]:
    """The period bookkeeping of x86_perf_event_set_period() (arch/x86/events/core.c): far
    behind (left <= -period, a skid of more than a period) restarts a whole period; a period
    that elapsed (left <= 0) carries the overshoot into the next one. Updates period_left;
    returns (left, whether a period elapsed)."""
    left, period = e.period_left, e.period
    elapsed = False
    if left <= -period:
        left = period
        elapsed = True
    if left <= 0:
        left += period
        elapsed = True
    e.period_left = left
    return left, elapsed


def _hw_left(e: PerfEvent, left: int) -> int:
    """What x86_perf_event_set_period() programs: at most x86_pmu.max_period (half the
    counter, so a counter starts negative and its sign bit tells an overflow). Not modelled:
    its `left < 2 -> 2` quirk for old CPUs; with it a 1-event period (KVM's event for a
    guest counter at -1) overflows one event late."""
    return min(left, e._mask >> 1)


def _rotate_flexible(groups: list[PerfEvent]) -> None:
    for i, g in enumerate(groups):
        if not g.attr.pinned:
            groups.append(groups.pop(i))
            return
