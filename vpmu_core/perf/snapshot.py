"""What the report reads of a perf event: a plain record taken at report time, so the
metrics layer never holds a live `PerfEvent` (issue 13: each layer contributes a snapshot)."""

from __future__ import annotations

from dataclasses import dataclass

from vpmu_core.events import EventKind
from vpmu_core.perf.event import PerfEvent


@dataclass(frozen=True)
class EventSnapshot:
    """One perf event as `read(2)` would report it now (a closed one: as it was when it
    closed), with its ground truth."""

    id: int
    label: str
    #: the `EventKind` name in lower case, None for an event that counts nothing
    kind: str | None
    owner: str
    pid: int
    cpu: int
    pinned: bool
    exclude_guest: bool
    exclude_host: bool
    state: str
    value: int
    time_enabled_ns: int
    time_running_ns: int
    samples: int
    truth: int


def snapshot_event(ev: PerfEvent, truth: int) -> EventSnapshot:
    """Read `ev` (an open event through `read()`, a closed one from what it kept)."""
    c = ev.read() if not ev.closed else None
    return EventSnapshot(
        id=ev.id,
        label=ev.attr.label(),
        kind=EventKind(ev.hw.kind).name.lower() if ev.hw.kind is not None else None,
        owner=ev.owner,
        pid=ev.pid,
        cpu=ev.cpu,
        pinned=ev.attr.pinned,
        exclude_guest=ev.attr.exclude_guest,
        exclude_host=ev.attr.exclude_host,
        state=ev.state.name,
        value=c.value if c else ev.count,
        time_enabled_ns=c.time_enabled if c else ev.enabled_ns,
        time_running_ns=c.time_running if c else ev.running_ns,
        samples=ev.samples,
        truth=truth,
    )
