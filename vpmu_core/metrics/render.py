"""Human output of reports: `perf stat`-like rich tables.

Pure functions from the report dict (see docs/report-schema.md) to rich renderables; the
CLI prints them. Nothing here prints by itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text


def _int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _pct(p: float | None) -> str:
    return "n/a" if p is None else f"{p:+.2f}%"


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms"


def _err_style(p: float | None) -> str:
    if p is None:
        return "dim"
    a = abs(p)
    return "green" if a < 0.5 else "yellow" if a < 5 else "bold red"


def header(report: dict[str, Any]) -> Text:
    c = report["composition"]
    scn = report.get("scenario", {})
    opts = ",".join(f"{k}={v}" for k, v in sorted(c.get("mode_options", {}).items()))
    mode = c["mode"] + (f":{opts}" if opts else "")
    fac = ", ".join(c.get("facilities") or []) or "none"
    t = Text()
    t.append(f"vpmu: {scn.get('name') or 'scenario'}", style="bold")
    t.append(f" - {c['cpu']}, mode {mode}, facilities {fac}, {c['cpus']} CPUs, seed {c['seed']}, ")
    t.append(_ms(report["duration_ns"]))
    if scn.get("description"):
        t.append(f"\n{scn['description']}", style="dim")
    return t


def events_table(report: dict[str, Any], scope_prefix: str, title: str) -> Table | None:
    rows = [e for e in report["events"] if e["scope"].startswith(scope_prefix)]
    if not rows:
        return None
    t = Table(title=title, title_justify="left", box=None, pad_edge=False, header_style="bold")
    t.add_column("counted", justify="right")
    t.add_column("event", no_wrap=True)
    t.add_column("where", no_wrap=True)
    t.add_column("(running)", justify="right")
    t.add_column("scaled", justify="right")
    t.add_column("truth", justify="right")
    t.add_column("error", justify="right")
    t.add_column("state")
    for e in rows:
        where = (
            f"{e['scope'].removeprefix('guest:')}/vcpu{e['cpu']}"
            if e["scope"] != "host"
            else (f"cpu{e['cpu']}" if e["cpu"] >= 0 else f"pid {e['pid']}")
        )
        state = e["state"]
        t.add_row(
            _int(e["value"]),
            e["label"],
            where,
            f"({e['running_pct']:.2f}%)",
            _int(e["scaled"]),
            _int(e["truth"]),
            Text(_pct(e["error_pct"]), style=_err_style(e["error_pct"])),
            Text(state, style="bold red" if state == "ERROR" else ""),
        )
    return t


def silent_table(report: dict[str, Any]) -> RenderableType:
    rows = report["silent_errors"]
    if not rows:
        return Text("Silent errors: none", style="green")
    t = Table(
        title=f"Silent errors ({_ms(report['silent_error_total_ns'])} in total)",
        title_justify="left",
        box=None,
        header_style="bold",
    )
    for c in ("owner", "counter", "from", "to", "for", "cause"):
        t.add_column(c, justify="right" if c in ("from", "to", "for") else "left")
    for s in rows:
        t.add_row(s["owner"], s["counter"], _ms(s["start_ns"]), _ms(s["end_ns"]), _ms(s["duration_ns"]), s["cause"])
    return t


def host_loss_table(report: dict[str, Any]) -> RenderableType | None:
    rows = report["host_loss"]
    if not rows:
        return None
    t = Table(title="Host profiling loss", title_justify="left", box=None, header_style="bold")
    for c in ("event", "lost", "of truth", "why"):
        t.add_column(c, justify="right" if c in ("lost", "of truth") else "left")
    for h in rows:
        pct = h["lost"] * 100.0 / h["truth"] if h["truth"] else 0.0
        t.add_row(h["label"], _int(h["lost"]), f"{pct:.2f}%", h["reason"])
    return t


def overhead_tables(report: dict[str, Any]) -> list[RenderableType]:
    ov = {k: v for k, v in report["overhead"].items() if k != "host"}
    out: list[RenderableType] = []
    if not ov:
        return out
    t = Table(title="Hypervisor overhead", title_justify="left", box=None, header_style="bold")
    for c in ("vCPU", "exits", "fastpath", "userspace", "host cycles", "cycles/exit", "cycles/guest s", "PMIs"):
        t.add_column(c, justify="left" if c == "vCPU" else "right")
    for name, o in ov.items():
        t.add_row(
            name,
            _int(o["total_exits"]),
            _int(o["fastpath_exits"]),
            _int(o["userspace_exits"]),
            _int(o["total_overhead_cycles"]),
            f"{o['cycles_per_exit']:,.1f}",
            f"{o['overhead_cycles_per_guest_second']:,.0f}",
            _int(o["pmis"]),
        )
    out.append(t)
    ops = sorted({op for o in ov.values() for op in o["overhead_cycles"]})
    if ops:
        t = Table(
            title="Overhead by operation (host cycles / calls)", title_justify="left", box=None, header_style="bold"
        )
        t.add_column("operation")
        for name in ov:
            t.add_column(name, justify="right")
        for op in ops:
            t.add_row(
                op, *(f"{_int(o['overhead_cycles'].get(op, 0))} / {_int(o['calls'].get(op, 0))}" for o in ov.values())
            )
        out.append(t)
    reasons = sorted({r for o in ov.values() for r in o["exits"]})
    if reasons:
        t = Table(title="VM-exits by reason", title_justify="left", box=None, header_style="bold")
        t.add_column("reason")
        for name in ov:
            t.add_column(name, justify="right")
        for r in reasons:
            t.add_row(r, *(_int(o["exits"].get(r, 0)) for o in ov.values()))
        out.append(t)
    return out


def perf_api_table(report: dict[str, Any]) -> Table:
    api = report["perf_api"]
    t = Table(title="Perf API calls", title_justify="left", box=None, header_style="bold")
    t.add_column("call")
    for scope in api:
        t.add_column(scope, justify="right")
    calls = sorted({c for st in api.values() for c in st})
    for c in calls:
        t.add_row(c, *(_int(st.get(c, 0)) for st in api.values()))
    host_ops = report["overhead"].get("host", {}).get("calls", {})
    if host_ops:
        t.add_row("", *("" for _ in api))
        for op, n in host_ops.items():
            t.add_row(f"host {op}", _int(n), *("" for _ in list(api)[1:]))
    return t


def open_errors_table(report: dict[str, Any]) -> Table | None:
    rows = report.get("open_errors") or []
    if not rows:
        return None
    t = Table(title="perf_event_open failures", title_justify="left", box=None, header_style="bold")
    for c in ("session", "scope", "event", "where", "at", "error"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["session"], r["scope"], r["event"], r["where"], _ms(r["time_ns"]), r["error"])
    return t


def facilities_table(report: dict[str, Any]) -> Table | None:
    """Guest facility state at the end (e.g. how many LBR records still hold a branch)."""
    rows = report.get("facilities") or {}
    if not rows:
        return None
    keys = sorted({k for per in rows.values() for f in per.values() for k in f})
    t = Table(title="Guest facilities", title_justify="left", box=None, header_style="bold")
    for c in ("vCPU", "facility", *keys):
        t.add_column(c)
    for vcpu, per in sorted(rows.items()):
        for name, f in sorted(per.items()):
            t.add_row(vcpu, name, *(str(f.get(k, "")) for k in keys))
    return t


def guest_faults_table(report: dict[str, Any]) -> Table | None:
    rows = report.get("guest_faults") or []
    if not rows:
        return None
    t = Table(title="Guest faults (scripted WRMSRs)", title_justify="left", box=None, header_style="bold")
    for c in ("vCPU", "msr", "value", "vector", "at"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["vcpu"], r["msr"], r["value"], str(r["vector"]), _ms(r["time_ns"]))
    return t


def leaks_text(report: dict[str, Any]) -> Text:
    lk = report["leaks"]
    if not lk["leaks"]:
        return Text(f"Leak checks: {lk['checks']:,} run, no leak", style="green")
    t = Text(f"Leak checks: {lk['checks']:,} run, {len(lk['leaks'])} LEAK(S)\n", style="bold red")
    for x in lk["leaks"][:20]:
        t.append(f"  {_ms(x['time_ns'])} {x['where']}: {x['what']}\n")
    return t


def render_report(report: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType | None] = [
        header(report),
        events_table(report, "guest:", "Guest perf events (what the guest believes vs ground truth)"),
        events_table(report, "host", "Host perf events"),
        open_errors_table(report),
        silent_table(report),
        host_loss_table(report),
        *overhead_tables(report),
        perf_api_table(report),
        facilities_table(report),
        guest_faults_table(report),
        leaks_text(report),
    ]
    out: list[RenderableType] = []
    for p in parts:
        if p is not None:
            out.append(p)
            out.append(Text(""))
    return Group(*out[:-1])


# ---- compare ------------------------------------------------------------------------------------
COMPARE_ROWS: tuple[tuple[str, str], ...] = (
    ("guest events", "guest_events"),
    ("guest mean |error|", "guest_mean_abs_error_pct"),
    ("guest max |error|", "guest_max_abs_error_pct"),
    ("silent errors", "silent_errors"),
    ("silent error time", "silent_error_total_ns"),
    ("host lost counts", "host_lost_counts"),
    ("host lost share", "host_lost_pct"),
    ("VM-exits", "total_exits"),
    ("overhead cycles", "overhead_cycles"),
    ("cycles per exit", "cycles_per_exit"),
    ("overhead cycles per guest s", "overhead_cycles_per_guest_second"),
    ("leaks", "leaks"),
    ("perf_event_open failures", "open_errors"),
)


def _fmt_metric(key: str, v: Any) -> str:
    if key.endswith("_pct"):
        return f"{v:.2f}%"
    if key.endswith("_ns"):
        return _ms(v)
    if isinstance(v, float):
        return f"{v:,.1f}"
    return _int(v)


def compare_rows(results: Iterable[tuple[str, dict[str, Any]]]) -> list[tuple[str, list[str]]]:
    res = list(results)
    rows: list[tuple[str, list[str]]] = []
    for label, key in COMPARE_ROWS:
        rows.append((label, [_fmt_metric(key, r["summary"][key]) for _, r in res]))
    reasons = sorted({x for _, r in res for x in r["summary"]["exits"]})
    for x in reasons:
        rows.append((f"  exits: {x}", [_int(r["summary"]["exits"].get(x, 0)) for _, r in res]))
    scopes = sorted({s for _, r in res for s in r["summary"]["perf_api_calls"]})
    for s in scopes:
        rows.append((f"  perf API calls: {s}", [_int(r["summary"]["perf_api_calls"].get(s, 0)) for _, r in res]))
    return rows


def render_compare(scenario: str, results: list[tuple[str, dict[str, Any]]]) -> Table:
    first = results[0][1]
    c = first["composition"]
    t = Table(
        title=f"vpmu compare: {scenario} - {c['cpu']}, {c['cpus']} CPUs, seed {c['seed']}, {_ms(first['duration_ns'])}",
        title_justify="left",
        header_style="bold",
    )
    t.add_column("metric")
    for label, _ in results:
        t.add_column(label, justify="right")
    for label, vals in compare_rows(results):
        t.add_row(label, *vals)
    return t
