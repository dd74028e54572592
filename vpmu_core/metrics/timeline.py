"""A timeline recorder: the tracer `host.set_tracer()` takes.

It records, as plain data, who owned each physical (and virtual) counter over time, the
VM-entries and exits of each vCPU, PMIs, and the state of each host perf event. The trace
writer (`vpmu_core/metrics/trace.py`) and the plot (`vpmu_core/metrics/plot.py`) read it.

Tracks are named:
  * ``host/cpu0/gp0``, ``host/cpu0/fixed0``: a host CPU's physical counter (its owner:
    the perf event scheduled on it, e.g. ``kvm:vm0/vcpu0 pmc0`` or ``user:nmi_watchdog``);
  * ``guest:vm0/vcpu0/gp0``: a guest perf event on a virtual counter;
  * ``vm0/vcpu0``: ``guest`` while in guest mode, ``exit:<reason>`` while KVM handles an exit;
  * ``event 3 nmi_watchdog/cycles``: a host perf event's state (ACTIVE, INACTIVE, ERROR, OFF).

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

    # ---- tracer API (called by the core) ------------------------------------------------
    def counters(self, perf_name: str, cpu: int, t_ns: int, active: dict[int, Any]) -> None:
        key = (perf_name, cpu)
        prev = self._counters.get(key, {})
        now = {idx: owner_label(ev) for idx, ev in active.items()}
        where = f"cpu{cpu}" if perf_name == "host" else f"vcpu{cpu}"
        kind = "counter" if perf_name == "host" else "guest_counter"
        for idx in sorted(set(prev) | set(now)):
            if prev.get(idx) != now.get(idx):
                ev = active.get(idx)
                args = {"event_id": ev.id, "owner": ev.owner} if ev is not None else None
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
        kind = "fastpath" if fastpath else "userspace" if userspace else "slow"
        self._switch(vcpu.name, "vcpu", t_ns, f"exit:{reason}", {"path": kind})

    def vm_entry(self, vcpu: Any, t_ns: int) -> None:
        self._switch(vcpu.name, "vcpu", t_ns, "guest")

    def pmi(self, vcpu: Any, t_ns: int) -> None:
        self.kinds.setdefault(vcpu.name, "vcpu")
        t = self._t(vcpu.name, t_ns)
        if not self._full():
            self.instants.append(Instant(vcpu.name, t, "PMI"))

    def mark(self, track: str, t_ns: int, name: str, args: dict[str, Any] | None = None) -> None:
        """A scenario action (event opened, work queued...) on a track of its own."""
        self.kinds.setdefault(track, "action")
        t = self._t(track, t_ns)
        if not self._full():
            self.instants.append(Instant(track, t, name, args or {}))

    # ---- end ------------------------------------------------------------------------------
    def finish(self, end_ns: int) -> None:
        """Close every open slice at `end_ns` (call once, after the run)."""
        self._poll_states(end_ns)
        end = max(end_ns, self.end_ns)
        for track in sorted(self._open):
            self._close(track, max(end, self._last.get(track, 0)))
        self.end_ns = end

    def tracks(self) -> list[str]:
        return sorted(self.kinds)
