"""A timeline recorder: the tracer `host.set_tracer()` takes.

It records, as plain data, who owned each physical (and virtual) counter over time, the
VM-entries and exits of each vCPU, PMIs, and the state of each host perf event. The trace
writer (`vpmu_core/metrics/trace.py`) and the plot (`vpmu_core/metrics/plot.py`) read it.

Tracks are named:
  * ``host/cpu0/gp0``, ``host/cpu0/fixed0``: a host CPU's physical counter (its owner:
    the perf event scheduled on it, e.g. ``kvm:vm0/vcpu0 pmc0`` or ``user:nmi_watchdog``);
  * ``guest:vm0/vcpu0/gp0``: a guest perf event on a virtual counter;
  * ``vm0/vcpu0``: ``guest`` while in guest mode, ``exit:<reason>`` while KVM handles an exit;
  * ``event 3 nmi_watchdog/cycles``: a host perf event's state (ACTIVE, INACTIVE, ERROR, OFF);
  * ``host/cpu0/task``: the host task running on a CPU (a vCPU, a host thread, or idle), so
    a preempted vCPU is explained;
  * counter values (``counter_samples``): each guest counter's value as the guest would
    read it, sampled at every VM-exit when it changed (Perfetto 'C' counter tracks).

While the mediated vPMU has a guest's PMU context loaded on a CPU (host perf's
`guest_loaded`), the physical counters the guest owns show the guest as their owner
(``guest:vm0/vcpu0``): host perf scheduled its events out, the guest's values are in the
hardware. After `finish()` the recorder ignores further callbacks (the report's own reads
at the end must not add slices past the run's end).

Per-CPU clocks advance one CPU at a time, so a callback may come with a time earlier than
the last one on the same track; times are clamped per track so slices never go backwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vpmu_core.hw.pmc import FIXED_BASE


@dataclass
class Slice:
    track: str
    start_ns: int
    end_ns: int
    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Instant:
    track: str
    t_ns: int
    name: str
    args: dict[str, Any] = field(default_factory=dict)


def counter_name(idx: int) -> str:
    return f"fixed{idx - FIXED_BASE}" if idx >= FIXED_BASE else f"gp{idx}"


def owner_label(ev: Any) -> str:
    return f"{ev.owner}:{ev.attr.label()}"


class Timeline:
    """Tracer callbacks -> slices and instants. `max_records` bounds memory on long runs."""

    def __init__(self, host: Any, max_records: int = 400_000) -> None:
        self.host = host
        self.max_records = max_records
        self.slices: list[Slice] = []
        self.instants: list[Instant] = []
        self.dropped = 0
        #: track -> (start_ns, name, args) of the slice currently open
        self._open: dict[str, tuple[int, str, dict[str, Any]]] = {}
        self._last: dict[str, int] = {}
        self._counters: dict[tuple[str, int], dict[int, str]] = {}
        self._states: dict[int, str] = {}
        #: kind of each track: "counter", "guest_counter", "vcpu", "event"
        self.kinds: dict[str, str] = {}
        self.end_ns = 0
        #: (track, t_ns, value): guest counter values over time ('C' tracks)
        self.counter_samples: list[tuple[str, int, int]] = []
        self._values: dict[str, int] = {}
        self.finished = False
        self._hook_task_switches()

    # ---- helpers --------------------------------------------------------------------------
    def _t(self, track: str, t_ns: int) -> int:
        t = max(t_ns, self._last.get(track, 0))
        self._last[track] = t
        if t > self.end_ns:
            self.end_ns = t
        return t

    def _full(self) -> bool:
        if len(self.slices) + len(self.instants) >= self.max_records:
            self.dropped += 1
            return True
        return False

    def _close(self, track: str, t: int) -> None:
        cur = self._open.pop(track, None)
        if cur is not None and t > cur[0] and not self._full():
            self.slices.append(Slice(track, cur[0], t, cur[1], cur[2]))

    def _switch(self, track: str, kind: str, t_ns: int, name: str | None, args: dict[str, Any] | None = None) -> None:
        """End the track's current slice at `t_ns` and start `name` (None: nothing)."""
        self.kinds.setdefault(track, kind)
        t = self._t(track, t_ns)
        cur = self._open.get(track)
        if cur is not None and cur[1] == name:
            return
        self._close(track, t)
        if name is not None:
            self._open[track] = (t, name, args or {})

    def _hook_task_switches(self) -> None:
        """Observe each CPU's context switches (`HostCpu.switch_to`), wrapping the bound
        method of this host's CPUs only: the engine has no tracer callback for them."""
        for cpu in getattr(self.host, "cpus", ()):
            orig = cpu.switch_to

            def switch_to(task: Any, _orig: Any = orig, _cpu: Any = cpu) -> None:
                _orig(task)
                if not self.finished:
                    name = None if task is None else getattr(task, "name", None) or f"pid {task.pid}"
                    self._switch(f"host/cpu{_cpu.index}/task", "task", _cpu.now_ns(), name)

            cpu.switch_to = switch_to

    def _guest_loaded(self, cpu: int) -> dict[int, str]:
        """Physical counters the guest owns while a mediated context is loaded on `cpu`."""
        perf = getattr(self.host, "perf", None)
        ctx = getattr(perf, "ctx", None)
        if ctx is None or not getattr(ctx[cpu], "guest_loaded", False):
            return {}
        task = self.host.cpus[cpu].current_task
        vcpu = getattr(task, "vcpu", None)
        if vcpu is None:
            return {}
        st = vcpu.mode_state
        idx = [*getattr(st, "gp_idx", ()), *getattr(st, "fixed_idx", ())] or [p.idx for p in vcpu.pmu.pmcs]
        return {i: f"guest:{vcpu.name}" for i in idx}

    def _sample_values(self, vcpu: Any, t_ns: int) -> None:
        values = self.host.hooks.guest_counter_values(vcpu=vcpu)
        if values is None:
            return
        for name, value in sorted(values.items()):
            track = f"{vcpu.name} {name}"
            if self._values.get(track) != value and not self._full():
                self._values[track] = value
                self.counter_samples.append((track, t_ns, value))

    # ---- tracer API (called by the core) ------------------------------------------------
    def counters(self, perf_name: str, cpu: int, t_ns: int, active: dict[int, Any]) -> None:
        if self.finished:
            return
        key = (perf_name, cpu)
        prev = self._counters.get(key, {})
        now = {idx: owner_label(ev) for idx, ev in active.items()}
        if perf_name == "host":
            for idx, label in self._guest_loaded(cpu).items():
                now.setdefault(idx, label)
        where = f"cpu{cpu}" if perf_name == "host" else f"vcpu{cpu}"
        kind = "counter" if perf_name == "host" else "guest_counter"
        for idx in sorted(set(prev) | set(now)):
            if prev.get(idx) != now.get(idx):
                ev = active.get(idx)
                if ev is not None:
                    args: dict[str, Any] | None = {"event_id": ev.id, "owner": ev.owner}
                elif idx in now:  # the guest's own value, loaded by the mediated vPMU
                    args = {"owner": "guest", "mediated": "guest context loaded"}
                else:
                    args = None
                self._switch(f"{perf_name}/{where}/{counter_name(idx)}", kind, t_ns, now.get(idx), args)
        self._counters[key] = now
        if perf_name == "host":
            self._poll_states(t_ns)

    def _poll_states(self, t_ns: int) -> None:
        for ev in self.host.user_events:
            st = "CLOSED" if ev.closed else ev.state.name
            if self._states.get(ev.id) != st:
                self._states[ev.id] = st
                name = None if st in ("OFF", "CLOSED") else st
                blocked = getattr(ev, "blocked_by", None)
                self._switch(
                    f"event {ev.id} {ev.attr.label()} " + (f"cpu{ev.cpu}" if ev.cpu >= 0 else f"pid{ev.pid}"),
                    "event",
                    t_ns,
                    name,
                    {"blocked_by": blocked} if blocked else {},
                )

    def vm_exit(self, vcpu: Any, reason: str, fastpath: bool, userspace: bool, t_ns: int) -> None:
        if self.finished:
            return
        kind = "fastpath" if fastpath else "userspace" if userspace else "slow"
        self._switch(vcpu.name, "vcpu", t_ns, f"exit:{reason}", {"path": kind})
        self._sample_values(vcpu, self._last[vcpu.name])

    def vm_entry(self, vcpu: Any, t_ns: int) -> None:
        if self.finished:
            return
        self._switch(vcpu.name, "vcpu", t_ns, "guest")

    def pmi(self, vcpu: Any, t_ns: int) -> None:
        if self.finished:
            return
        self.kinds.setdefault(vcpu.name, "vcpu")
        t = self._t(vcpu.name, t_ns)
        if not self._full():
            self.instants.append(Instant(vcpu.name, t, "PMI"))

    def mark(self, track: str, t_ns: int, name: str, args: dict[str, Any] | None = None) -> None:
        """A scenario action (event opened, work queued...) on a track of its own."""
        if self.finished:
            return
        self.kinds.setdefault(track, "action")
        t = self._t(track, t_ns)
        if not self._full():
            self.instants.append(Instant(track, t, name, args or {}))

    # ---- end ------------------------------------------------------------------------------
    def finish(self, end_ns: int) -> None:
        """Close every open slice at the run's end (call once, after the run); later
        callbacks are ignored, so every slice ends by `end_ns` and slices nest properly."""
        self._poll_states(end_ns)
        for vm in getattr(self.host, "vms", ()):
            for v in vm.vcpus:
                self._sample_values(v, end_ns)
        end = max(end_ns, self.end_ns)
        for track in sorted(self._open):
            self._close(track, max(end, self._last.get(track, 0)))
            self._last[track] = end
        self.end_ns = end
        self.finished = True

    def tracks(self) -> list[str]:
        return sorted(self.kinds)
