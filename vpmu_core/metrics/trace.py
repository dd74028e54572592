"""Write a `Timeline` as a Chrome JSON trace (the Trace Event Format), which Perfetto UI
(ui.perfetto.dev) and chrome://tracing open.

Format: {"traceEvents": [...], "displayTimeUnit": "ns", "otherData": {...}}. Each track is
a thread (`tid`) in one of the processes (`pid`): 1 host PMU counters (owner over time,
the guest's while the mediated vPMU has its context loaded), 2 guest PMU counters, 3
vCPUs, 4 host perf event states, 5 scenario actions, 6 the task on each host CPU; 7 holds
'C' (counter) events, one track per guest counter with its value over time; names come from "M"
(metadata) events `process_name` / `thread_name`, order from `thread_sort_index`. Slices
are "X" (complete) events with `ts`/`dur` in microseconds (fractions keep nanoseconds);
PMIs and scenario actions are "i" (instant) events. Key order and number formatting are
fixed so the same run gives the same bytes.

No writer library is used: the maintained Perfetto Python package writes protobuf traces
through generated bindings and a protobuf dependency, while this documented JSON format
needs nothing and opens in the same UI.
"""

from __future__ import annotations

import json
from typing import IO, Any

from vpmu_core.metrics.timeline import Timeline

PROCESSES = {
    "counter": (1, "host PMU: physical counters (owner over time)"),
    "guest_counter": (2, "guest PMUs: virtual counters (guest perf)"),
    "vcpu": (3, "vCPUs: guest mode / VM-exits, PMIs"),
    "event": (4, "host perf events: state"),
    "action": (5, "scenario actions"),
    "task": (6, "host CPUs: the task running (vCPU, host thread)"),
}
#: the process of the counter-value ('C') tracks, one per guest counter
COUNTER_VALUES = (7, "guest counter values (as the guest reads them)")


def _us(ns: int) -> float | int:
    return ns // 1000 if ns % 1000 == 0 else ns / 1000


def trace_events(tl: Timeline, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    tids: dict[str, tuple[int, int]] = {}
    events: list[dict[str, Any]] = []
    for kind, (pid, pname) in sorted(PROCESSES.items(), key=lambda kv: kv[1][0]):
        tracks = [t for t in tl.tracks() if tl.kinds[t] == kind]
        if not tracks:
            continue
        events.append({"ph": "M", "pid": pid, "tid": 0, "name": "process_name", "args": {"name": pname}})
        events.append({"ph": "M", "pid": pid, "tid": 0, "name": "process_sort_index", "args": {"sort_index": pid}})
        for i, track in enumerate(tracks, start=1):
            tids[track] = (pid, i)
            events.append({"ph": "M", "pid": pid, "tid": i, "name": "thread_name", "args": {"name": track}})
            events.append({"ph": "M", "pid": pid, "tid": i, "name": "thread_sort_index", "args": {"sort_index": i}})
    body: list[tuple[int, int, int, dict[str, Any]]] = []
    for s in tl.slices:
        pid, tid = tids[s.track]
        ev = {
            "ph": "X",
            "pid": pid,
            "tid": tid,
            "name": s.name,
            "cat": tl.kinds[s.track],
            "ts": _us(s.start_ns),
            "dur": _us(s.end_ns - s.start_ns),
        }
        if s.args:
            ev["args"] = dict(sorted(s.args.items()))
        body.append((s.start_ns, pid, tid, ev))
    for it in tl.instants:
        pid, tid = tids[it.track]
        ev = {
            "ph": "i",
            "s": "t",
            "pid": pid,
            "tid": tid,
            "name": it.name,
            "cat": tl.kinds[it.track],
            "ts": _us(it.t_ns),
        }
        if it.args:
            ev["args"] = dict(sorted(it.args.items()))
        body.append((it.t_ns, pid, tid, ev))
    if tl.counter_samples:
        cpid, cname = COUNTER_VALUES
        events.append({"ph": "M", "pid": cpid, "tid": 0, "name": "process_name", "args": {"name": cname}})
        events.append({"ph": "M", "pid": cpid, "tid": 0, "name": "process_sort_index", "args": {"sort_index": cpid}})
        for track, t_ns, value in tl.counter_samples:
            body.append(
                (
                    t_ns,
                    cpid,
                    0,
                    {"ph": "C", "pid": cpid, "tid": 0, "name": track, "ts": _us(t_ns), "args": {"value": value}},
                )
            )
    body.sort(key=lambda b: (b[0], b[1], b[2]))
    events.extend(b[3] for b in body)
    return {
        "displayTimeUnit": "ns",
        "otherData": dict(sorted((meta or {}).items())) | {"dropped_records": tl.dropped},
        "traceEvents": events,
    }


def dump_chrome_json(tl: Timeline, f: IO[str], meta: dict[str, Any] | None = None) -> None:
    """Write the trace to an open text file (the command writes it atomically)."""
    json.dump(trace_events(tl, meta), f, sort_keys=True, separators=(",", ":"))
    f.write("\n")


def write_chrome_json(tl: Timeline, path: str, meta: dict[str, Any] | None = None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        dump_chrome_json(tl, f, meta)
