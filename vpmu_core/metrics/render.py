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


def yaml_value(v: Any) -> str:
    """A mode option value as the user would write it (YAML): `false`, not Python's `False`."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    return str(v)


def mode_label(composition: dict[str, Any]) -> str:
    """`mediated:elide_writes=false,switch_at=exit`: the mode and its options, sorted."""
    opts = ",".join(f"{k}={yaml_value(v)}" for k, v in sorted((composition.get("mode_options") or {}).items()))
    return composition["mode"] + (f":{opts}" if opts else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _titled(title: str, body: RenderableType) -> RenderableType:
    """A title on its own line above a table: a rich table title wraps at the table's width
    (a narrow table would break it over several lines); a line of text does not."""
    return Group(Text(title, style="bold"), body)


def _table(**kw: Any) -> Table:
    return Table(box=None, pad_edge=False, header_style="bold", **kw)


def _num_col(t: Table, header: str) -> None:
    """A number column: never wrapped nor truncated (a number shown cut is a number shown wrong)."""
    t.add_column(header, justify="right", no_wrap=True)


def _text_col(t: Table, header: str, **kw: Any) -> None:
    """A text column: folds onto more lines when the terminal is narrow."""
    t.add_column(header, overflow="fold", **kw)


def _err_style(p: float | None) -> str:
    if p is None:
        return "dim"
    a = abs(p)
    return "green" if a < 0.5 else "yellow" if a < 5 else "bold red"


def header(report: dict[str, Any]) -> Text:
    c = report["composition"]
    scn = report.get("scenario", {})
    mode = mode_label(c)
    fac = ", ".join(c.get("facilities") or []) or "none"
    t = Text()
    t.append(f"vpmu: {scn.get('name') or 'scenario'}", style="bold")
    t.append(f" - {c['cpu']}, mode {mode}, facilities {fac}, {_plural(c['cpus'], 'CPU')}, seed {c['seed']}, ")
    t.append(_ms(report["duration_ns"]))
    if scn.get("description"):
        t.append(f"\n{scn['description']}", style="dim")
    return t


def _where(e: dict[str, Any]) -> str:
    if e["scope"] != "host":
        return f"{e['scope'].removeprefix('guest:')}/vcpu{e['cpu']}"
    return f"cpu{e['cpu']}" if e["cpu"] >= 0 else f"pid {e['pid']}"


def events_table(report: dict[str, Any], scope_prefix: str, title: str) -> RenderableType | None:
    rows = [e for e in report["events"] if e["scope"].startswith(scope_prefix)]
    if not rows:
        return None
    t = _table()
    _num_col(t, "counted")
    _text_col(t, "event", min_width=8)
    _text_col(t, "where", min_width=5)
    _num_col(t, "(running)")
    _num_col(t, "scaled")
    _num_col(t, "truth")
    _num_col(t, "error")
    # the raw count's error only where multiplexing makes it differ from the scaled one
    raw = any(e["error_pct"] != e["scaled_error_pct"] for e in rows)
    if raw:
        _num_col(t, "raw error")
    _text_col(t, "state")
    for e in rows:
        state = e["state"]
        t.add_row(
            _int(e["value"]),
            e["label"],
            _where(e),
            f"({e['running_pct']:.2f}%)",
            _int(e["scaled"]),
            _int(e["truth"]),
            Text(_pct(e["scaled_error_pct"]), style=_err_style(e["scaled_error_pct"])),
            *([Text(_pct(e["error_pct"]))] if raw else []),
            Text(state, style="bold red" if state == "ERROR" else ""),
        )
    return _titled(title, t)


def event_records(report: dict[str, Any]) -> list[dict[str, Any]]:
    """`vpmu run --format csv`: one row per perf event."""
    keys = (
        "scope", "id", "label", "kind", "owner", "pid", "cpu", "pinned", "exclude_guest", "exclude_host", "state",
        "value", "time_enabled_ns", "time_running_ns", "running_pct", "scaled", "truth", "scaled_error_pct",
        "error_pct", "samples",
    )  # fmt: skip
    return [{"where": _where(e), **{k: e[k] for k in keys}} for e in report["events"]]


def silent_table(report: dict[str, Any]) -> RenderableType:
    rows = report["silent_errors"]
    if not rows:
        return Text("Silent errors: none", style="green")
    t = _table()
    for c in ("owner", "counter", "from", "to", "for", "cause"):
        if c in ("from", "to", "for"):
            _num_col(t, c)
        else:
            _text_col(t, c)
    for s in rows:
        t.add_row(s["owner"], s["counter"], _ms(s["start_ns"]), _ms(s["end_ns"]), _ms(s["duration_ns"]), s["cause"])
    return _titled(f"Silent errors ({_ms(report['silent_error_total_ns'])} in total)", t)


def host_loss_table(report: dict[str, Any]) -> RenderableType | None:
    rows = report["host_loss"]
    refused = [r for r in report.get("open_errors") or [] if r["scope"] == "host"]
    if not rows and not refused:
        return None
    t = _table()
    _text_col(t, "event")
    _num_col(t, "lost")
    _num_col(t, "of truth")
    _text_col(t, "why")
    for h in rows:
        pct = h["lost"] * 100.0 / h["truth"] if h["truth"] else 0.0
        t.add_row(h["label"], _int(h["lost"]), f"{pct:.2f}%", h["reason"])
    for r in refused:  # never opened: it lost everything it would have counted
        t.add_row(f"{r['session']}/{r['event']} {r['where']}", "all", "100%", f"refused at open: {r['error']}")
    return _titled("Host profiling loss", t)


def overhead_tables(report: dict[str, Any]) -> list[RenderableType]:
    ov = {k: v for k, v in report["overhead"].items() if k != "host"}
    out: list[RenderableType] = []
    if not ov:
        return out
    t = _table()
    _text_col(t, "vCPU")
    for c in ("guest instr", "exits", "fastpath", "userspace", "host cycles", "cycles/exit", "cycles/guest s", "PMIs"):
        _num_col(t, c)
    for name, o in ov.items():
        t.add_row(
            name,
            _int(o.get("guest_instructions")),
            _int(o["total_exits"]),
            _int(o["fastpath_exits"]),
            _int(o["userspace_exits"]),
            _int(o["total_overhead_cycles"]),
            f"{o['cycles_per_exit']:,.1f}",
            f"{o['overhead_cycles_per_guest_second']:,.0f}",
            _int(o["pmis"]),
        )
    sm = report.get("summary") or {}
    if "cycles_per_exit_steady" in sm:
        note = Text(
            f"cycles per exit: {sm['cycles_per_exit']:,.1f} over the run, {sm['cycles_per_exit_steady']:,.1f} "
            f"steady state (from {_ms(sm['steady_from_ns'])}, {sm['steady_exits']:,} exits; without the one-time "
            "perf event creation at start)",
            style="dim",
        )
        out.append(_titled("Hypervisor overhead", Group(t, note)))
    else:
        out.append(_titled("Hypervisor overhead", t))
    ops = sorted({op for o in ov.values() for op in o["overhead_cycles"]})
    if ops:
        t = _table()
        _text_col(t, "operation")
        for name in ov:
            _num_col(t, _wrap_label(name))
        for op in ops:
            t.add_row(
                op, *(f"{_int(o['overhead_cycles'].get(op, 0))} / {_int(o['calls'].get(op, 0))}" for o in ov.values())
            )
        out.append(_titled("Overhead by operation (host cycles / calls)", t))
    reasons = sorted({r for o in ov.values() for r in o["exits"]})
    if reasons:
        t = _table()
        _text_col(t, "reason")
        for name in ov:
            _num_col(t, _wrap_label(name))
        for r in reasons:
            t.add_row(r, *(_int(o["exits"].get(r, 0)) for o in ov.values()))
        out.append(_titled("VM-exits by reason", t))
    return out


def perf_api_table(report: dict[str, Any]) -> RenderableType:
    api = report["perf_api"]
    t = _table()
    _text_col(t, "call")
    for scope in api:
        _num_col(t, _wrap_label(scope))
    calls = sorted({c for st in api.values() for c in st})
    for c in calls:
        t.add_row(c, *(_int(st.get(c, 0)) for st in api.values()))
    host_ops = report["overhead"].get("host", {}).get("calls", {})
    if host_ops:
        t.add_row("", *("" for _ in api))
        for op, n in host_ops.items():
            t.add_row(f"host {op}", _int(n), *("" for _ in list(api)[1:]))
    return _titled("Perf API calls", t)


def open_errors_table(report: dict[str, Any]) -> RenderableType | None:
    rows = report.get("open_errors") or []
    if not rows:
        return None
    t = _table()
    for c in ("session", "scope", "event", "where", "at", "error"):
        _num_col(t, c) if c == "at" else _text_col(t, c)
    for r in rows:
        t.add_row(r["session"], r["scope"], r["event"], r["where"], _ms(r["time_ns"]), r["error"])
    return _titled("perf_event_open failures", t)


def facilities_table(report: dict[str, Any]) -> RenderableType | None:
    """Guest facility state at the end (e.g. how many LBR records still hold a branch)."""
    rows = report.get("facilities") or {}
    if not rows:
        return None
    keys = sorted({k for per in rows.values() for f in per.values() for k in f})
    t = _table()
    for c in ("vCPU", "facility", *keys):
        _text_col(t, c)
    for vcpu, per in sorted(rows.items()):
        for name, f in sorted(per.items()):
            t.add_row(vcpu, name, *(yaml_value(f.get(k, "")) for k in keys))
    return _titled("Guest facilities", t)


def guest_faults_table(report: dict[str, Any]) -> RenderableType | None:
    rows = report.get("guest_faults") or []
    if not rows:
        return None
    t = _table()
    for c in ("vCPU", "msr", "value", "vector", "at"):
        _num_col(t, c) if c != "vCPU" else _text_col(t, c)
    for r in rows:
        t.add_row(r["vcpu"], r["msr"], r["value"], str(r["vector"]), _ms(r["time_ns"]))
    return _titled("Guest faults (scripted WRMSRs)", t)


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
    ("guest progress (instructions)", "guest_instructions"),
    ("guest events", "guest_events"),
    ("guest mean |error| (scaled)", "guest_mean_abs_error_pct"),
    ("guest max |error| (scaled)", "guest_max_abs_error_pct"),
    ("guest mean |raw error|", "guest_mean_abs_raw_error_pct"),
    ("silent errors", "silent_errors"),
    ("silent error time", "silent_error_total_ns"),
    ("host events refused", "host_events_refused"),
    ("host lost counts", "host_lost_counts"),
    ("host lost share", "host_lost_pct"),
    ("VM-exits", "total_exits"),
    ("overhead cycles", "overhead_cycles"),
    ("cycles per exit", "cycles_per_exit"),
    ("cycles per exit (steady)", "cycles_per_exit_steady"),
    ("overhead cycles per guest s", "overhead_cycles_per_guest_second"),
    ("leaks", "leaks"),
    ("perf_event_open failures", "open_errors"),
)


def _fmt_metric(key: str, v: Any, summary: dict[str, Any] | None = None) -> str:
    sm = summary or {}
    if key == "host_lost_pct" and sm.get("host_events_refused") and not sm.get("host_events"):
        return "n/a: all refused"
    if key == "host_events_refused":
        total = sm.get("host_events", 0) + v
        return f"{v:,} of {total:,}" if total else "0"
    if v is None:
        return "-"
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
        if not any(key in r["summary"] for _, r in res):
            continue
        rows.append((label, [_fmt_metric(key, r["summary"].get(key), r["summary"]) for _, r in res]))
    reasons = sorted({x for _, r in res for x in r["summary"]["exits"]})
    for x in reasons:
        rows.append((f"  exits: {x}", [_int(r["summary"]["exits"].get(x, 0)) for _, r in res]))
    scopes = sorted({s for _, r in res for s in r["summary"]["perf_api_calls"]})
    for s in scopes:
        rows.append((f"  perf API calls: {s}", [_int(r["summary"]["perf_api_calls"].get(s, 0)) for _, r in res]))
    return rows


def flatten(prefix: str, data: dict[str, Any]) -> dict[str, Any]:
    """{"exits": {"hlt": 3}} -> {"exits.hlt": 3} (CSV columns)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(f"{key}.", v))
        else:
            out[key] = v
    return out


def compare_records(results: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """`vpmu compare --format csv`: one row per mode, summary keys as columns."""
    reasons = sorted({x for _, r in results for x in r["summary"]["exits"]})
    out = []
    for label, r in results:
        sm = dict(r["summary"])
        sm["exits"] = {x: sm["exits"].get(x, 0) for x in reasons}
        out.append({"mode": label, "cpu": r["composition"]["cpu"], "seed": r["composition"]["seed"], **flatten("", sm)})
    return out


def _wrap_label(label: str) -> str:
    """A column header that can stack: `mediated:switch_at=run_loop` -> three short lines
    (split after ':' and ','), so narrow terminals keep every label whole and distinct."""
    return label.replace(":", ":\n").replace(",", ",\n").replace("/", "/\n") if len(label) > 12 else label


def _cell_width(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


def _chunks(labels: list[str], cells: list[list[str]], first: int, width: int | None) -> list[list[int]]:
    """Split the value columns into groups that fit `width` beside the first column, so a
    narrow terminal gets stacked tables rather than cut numbers."""
    idx = list(range(len(labels)))
    if width is None:
        return [idx]
    need = [max(_cell_width(_wrap_label(labels[i])), *(len(row[i]) for row in cells)) + 2 for i in idx]
    groups: list[list[int]] = [[]]
    used = first + 1
    for i in idx:
        if groups[-1] and used + need[i] > width:
            groups.append([])
            used = first + 1
        groups[-1].append(i)
        used += need[i]
    return groups


def render_compare(
    scenario: str, results: list[tuple[str, dict[str, Any]]], width: int | None = None
) -> RenderableType:
    first = results[0][1]
    c = first["composition"]
    title = Text(f"vpmu compare: {scenario}", style="bold")
    title.append(
        f"\n{c['cpu']}, {_plural(c['cpus'], 'CPU')}, seed {c['seed']}, {_ms(first['duration_ns'])}",
        style="",
    )
    rows = compare_rows(results)
    labels = [label for label, _ in results]
    metric_w = max(len(r[0]) for r in rows)
    parts: list[RenderableType] = [title]
    for group in _chunks(labels, [vals for _, vals in rows], metric_w, width):
        t = Table(header_style="bold", pad_edge=False)
        t.add_column("metric", no_wrap=True)
        for i in group:
            _num_col(t, _wrap_label(labels[i]))
        for label, vals in rows:
            t.add_row(label, *(vals[i] for i in group))
        parts.append(t)
    return Group(*parts)


# ---- sweep --------------------------------------------------------------------------------------
SWEEP_COLUMNS: tuple[tuple[str, str], ...] = (
    ("guest\n|err|", "guest_mean_abs_error_pct"),
    ("silent", "silent_errors"),
    ("host\nrefused", "host_events_refused"),
    ("host\nlost", "host_lost_pct"),
    ("exits", "total_exits"),
    ("cyc/exit", "cycles_per_exit"),
    ("cyc/exit\nsteady", "cycles_per_exit_steady"),
    ("leaks", "leaks"),
    ("open\nerrors", "open_errors"),
)


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Grid keys by their last path component where that stays unique (`rate_per_s`)."""
    last = {k: k.rsplit(".", 1)[-1] for k in keys}
    return {k: last[k] if list(last.values()).count(last[k]) == 1 else k for k in keys}


def _point_label(row: dict[str, Any], short: dict[str, str] | None = None) -> str:
    grid = row.get("grid") or {}
    short = short or {}
    return " ".join(f"{short.get(k, k)}={yaml_value(v)}" for k, v in grid.items()) or "-"


def _fixed_sets(rows: list[dict[str, Any]]) -> list[str]:
    """The --set overrides every point shares (shown once, above the table)."""
    common: list[str] | None = None
    for r in rows:
        grid = r.get("grid") or {}
        fixed = [x for x in r.get("set", []) if x.split("=", 1)[0] not in grid]
        common = fixed if common is None else [x for x in common if x in fixed]
    return common or []


def render_sweep(rows: list[dict[str, Any]], width: int | None = None) -> RenderableType:
    """The sweep table; on a terminal too narrow for one table, the points and their
    numbers are stacked as two tables joined by the point number (no number is cut)."""
    short = _short_keys(sorted({k for r in rows for k in (r.get("grid") or {})}))
    ident = [
        [str(i), r["scenario"], _wrap_label(mode_label(r["composition"])), _point_label(r, short)]
        for i, r in enumerate(rows, start=1)
    ]
    nums = []
    for r in rows:
        s = r["summary"]
        nums.append(
            [
                f"{s.get(key, 0):.2f}%"
                if key.endswith("_pct")
                else _int(s.get(key, 0))
                if key in ("host_events_refused", "total_exits")
                else _fmt_metric(key, s.get(key, 0))
                for _, key in SWEEP_COLUMNS
            ]
        )
    heads = ["#", "scenario", "mode", "point"]
    need = sum(max(len(h), *(_cell_width(x[i]) for x in ident)) + 2 for i, h in enumerate(heads))
    need += sum(max(_cell_width(h), *(len(x[i]) for x in nums)) + 2 for i, (h, _) in enumerate(SWEEP_COLUMNS))
    fixed = _fixed_sets(rows)
    title = f"vpmu sweep: {_plural(len(rows), 'point')}" + (f" ({' '.join(fixed)} on every point)" if fixed else "")
    stacked = width is not None and need > width
    t = _table()
    _num_col(t, "#")
    for h in heads[1:]:
        _text_col(t, h)
    if not stacked:
        for h, _ in SWEEP_COLUMNS:
            _num_col(t, h)
    for a, b in zip(ident, nums, strict=True):
        t.add_row(*a, *([] if stacked else b))
    if not stacked:
        return _titled(title, t)
    t2 = _table()
    _num_col(t2, "#")
    for h, _ in SWEEP_COLUMNS:
        _num_col(t2, h)
    for i, b in enumerate(nums, start=1):
        t2.add_row(str(i), *b)
    return _titled(title, Group(t, Text(""), t2))


def sweep_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`vpmu sweep --format csv`: one row per point; grid keys and summary keys as columns."""
    reasons = sorted({x for r in rows for x in r["summary"]["exits"]})
    out = []
    for r in rows:
        sm = dict(r["summary"])
        sm["exits"] = {x: sm["exits"].get(x, 0) for x in reasons}
        out.append(
            {
                "scenario": r["scenario"],
                "mode": mode_label(r["composition"]),
                "seed": r["composition"]["seed"],
                **{f"grid.{k}": v for k, v in (r.get("grid") or {}).items()},
                **flatten("", sm),
            }
        )
    return out
