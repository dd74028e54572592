"""The report: what each side believed it counted next to ground truth, what the host lost,
what the hypervisor spent, silent errors and leaks. Plain data, stable key order, so the
same scenario and seed give byte-identical JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from vpmu_core.events import EventKind
from vpmu_core.perf.attr import EventState
from vpmu_core.perf.snapshot import EventSnapshot, snapshot_event

if TYPE_CHECKING:
    from vpmu_core.engine.machine import Machine
    from vpmu_core.hv.snapshot import VmSnapshot

REPORT_SCHEMA_VERSION = 1


def _pct(a: int, b: int) -> float | None:
    if b == 0:
        return None if a == 0 else 100.0
    return round((a - b) * 100.0 / b, 4)


def _event_row(ev: EventSnapshot, scope: str) -> dict[str, Any]:
    value, enabled, running, truth = ev.value, ev.time_enabled_ns, ev.time_running_ns, ev.truth
    scaled = value * enabled // running if running else 0
    return {
        "scope": scope,
        "id": ev.id,
        "label": ev.label,
        "kind": ev.kind,
        "owner": ev.owner,
        "pid": ev.pid,
        "cpu": ev.cpu,
        "pinned": ev.pinned,
        "exclude_guest": ev.exclude_guest,
        "exclude_host": ev.exclude_host,
        "state": ev.state,
        "value": value,
        "time_enabled_ns": enabled,
        "time_running_ns": running,
        "running_pct": round(running * 100.0 / enabled, 2) if enabled else 0.0,
        "scaled": scaled,
        "truth": truth,
        "error_pct": _pct(value, truth),
        "scaled_error_pct": _pct(scaled, truth),
        "samples": ev.samples,
    }


def build_report(
    host: Machine,
    vms: Iterable[VmSnapshot],
    mode: Callable[[], dict[str, Any] | None],
    composition: dict[str, Any],
) -> dict[str, Any]:
    """Build the report of everything that happened so far: `host` is the machine (its
    perf, ledgers and clock), `vms` the snapshot each VM contributes (`VM.snapshot()`), `mode`
    gives the mode's own section (`vpmu_mode_report`), `composition` what was composed.

    Taking a snapshot reads the guest's counters (guest time passes), so `vms` is consumed
    after the host's events are read, and `mode` called last: pass a lazy iterable."""
    now = host.now_ns
    assert host.perf is not None
    events = []
    for ev in sorted(host.user_events, key=lambda e: e.id):
        events.append(_event_row(snapshot_event(ev, host.perf.truth_of(ev)), "host"))
    vms = list(vms)
    for vm in vms:
        for gev in vm.guest_events:
            events.append(_event_row(gev, f"guest:{vm.name}"))
    silent: list[dict[str, Any]] = [
        {
            "owner": iv.owner,
            "counter": iv.counter,
            "start_ns": iv.start_ns,
            "end_ns": iv.end_ns if iv.end_ns is not None else now,
            "duration_ns": iv.duration(now),
            "cause": iv.cause,
        }
        for iv in host.silent.intervals
        if iv.duration(now) > 0  # opened and closed at the same instant: noise, not an error
    ]
    host_loss = []
    for row in events:
        if row["scope"] != "host" or row["truth"] == 0:
            continue
        lost = row["truth"] - row["value"]
        reason = "none"
        if lost > 0:
            if row["running_pct"] < 100.0 and row["state"] != "ERROR":
                reason = "multiplexed or scheduled out (guest context loaded / preempted)"
            elif row["state"] == "ERROR":
                reason = "pinned event in ERROR"
            else:
                reason = "not counting while the guest or KVM ran (blind window)"
        host_loss.append(
            {"id": row["id"], "label": row["label"], "lost": lost, "truth": row["truth"], "reason": reason}
        )
    overhead: dict[str, Any] = {}
    for vm in vms:
        for v in vm.vcpus:
            total_exits = v.total_exits
            cyc = host.costs_ledger.cycles[v.name]
            total_cycles = sum(cyc.values())
            guest_s = v.guest_cycles / host.freq_hz
            overhead[v.name] = {
                "exits": v.exits,
                "total_exits": total_exits,
                "fastpath_exits": v.fastpath_exits,
                "userspace_exits": v.userspace_exits,
                "guest_cycles": v.guest_cycles,
                "guest_instructions": host.truth.total(v.name, EventKind.INSTRUCTIONS, guest=True),
                "overhead_cycles": dict(sorted(cyc.items())),
                "calls": dict(sorted(host.costs_ledger.calls[v.name].items())),
                "total_overhead_cycles": total_cycles,
                "cycles_per_exit": round(total_cycles / total_exits, 2) if total_exits else 0.0,
                "overhead_cycles_per_guest_second": round(total_cycles / guest_s, 1) if guest_s else 0.0,
                "pmis": v.pmis,
            }
    overhead["host"] = {
        "overhead_cycles": dict(sorted(host.costs_ledger.cycles["host"].items())),
        "calls": dict(sorted(host.costs_ledger.calls["host"].items())),
    }
    guest_counters = {v.name: v.guest_counters for vm in vms for v in vm.vcpus}
    facilities: dict[str, Any] = {v.name: v.facilities for vm in vms for v in vm.vcpus if v.facilities}
    perf_api = {"host": host.perf.stats.as_dict()}
    for vm in vms:
        if vm.guest_perf_stats is not None:
            perf_api[f"guest:{vm.name}"] = vm.guest_perf_stats
    mode_stats = mode()
    guest_errors = [{"vm": vm.name, **e} for vm in vms for e in vm.guest_kernel_errors]
    out = {
        "schema": REPORT_SCHEMA_VERSION,
        "composition": composition,
        "duration_ns": now,
        "events": events,
        "silent_errors": silent,
        "silent_error_total_ns": sum(s["duration_ns"] for s in silent),
        "host_loss": host_loss,
        "overhead": overhead,
        "perf_api": perf_api,
        "mode": mode_stats if mode_stats is not None else {},
        "guest_counters": guest_counters,
        "facilities": facilities,
        "leaks": {
            "checks": host.leaks.checks,
            "leaks": [{"where": lk.where, "what": lk.what, "time_ns": lk.time_ns} for lk in host.leaks.leaks],
        },
        "states": {str(e.id): e.state.name for e in host.user_events if e.state != EventState.OFF},
    }
    if guest_errors:  # only when a guest kernel hit one (reports without errors are unchanged)
        out["guest_kernel_errors"] = guest_errors
    return out
