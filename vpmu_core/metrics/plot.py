"""`vpmu plot`: PNGs of a run or of a sweep (matplotlib, Agg backend, headless).

A run (`plot_run`). Top: ownership timeline, one row per counter track (who owned each
physical or virtual counter over time; the guest, while the mediated vPMU has its context
loaded), per vCPU (guest mode vs VM-exits) and per host CPU (the task running), PMIs as
ticks, silent-error intervals as red hatched rows (one per vCPU) and a light red band.
Bottom: per event error (perf-stat scaled value vs ground truth, %) as bars. The title
names the scenario, CPU, mode with its options, and seed.

Scaling: slices are grouped by (row, colour) and each group is drawn with ONE
`broken_barh` call (it takes any number of (start, width) ranges and makes one
PolyCollection), so the cost is a few hundred matplotlib artists whatever the length of
the run, instead of one artist per slice (one simulated second of cloud_mix took over
10 minutes that way). Slices narrower than a pixel are kept: Agg draws them as hairlines.

A sweep (`plot_sweep`): cycles per exit, host lost share and guest mean |error| against
the swept parameter, one line per mode (and scenario, and other grid values).
"""

from __future__ import annotations

from collections import defaultdict
from typing import IO, Any

from vpmu_core.metrics.timeline import Timeline

GUEST_MODE, VM_EXIT, SILENT = "#55A868", "#C44E52", "#D62728"
ROW_KINDS = ("counter", "guest_counter", "vcpu", "task")


def _figure(width: int, height: int) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    dpi = 100
    return Figure(figsize=(width / dpi, height / dpi), dpi=dpi), dpi


def _title(report: dict[str, Any]) -> str:
    from vpmu_core.metrics.render import mode_label

    comp = report["composition"]
    name = report.get("scenario", {}).get("name") or "run"
    return f"{name}: {comp['cpu']}, mode {mode_label(comp)}, seed {comp['seed']} - counter ownership"


def plot_run(tl: Timeline, report: dict[str, Any], path: str | IO[bytes], width: int = 1600, height: int = 900) -> None:
    import matplotlib
    from matplotlib.colors import to_hex
    from matplotlib.patches import Patch

    fig, dpi = _figure(width, height)
    ax, ax2 = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 2]})
    silent = report.get("silent_errors") or []
    silent_rows = sorted({s["owner"] for s in silent})
    tracks = [t for t in tl.tracks() if tl.kinds[t] in ROW_KINDS]
    rows = tracks + [f"silent errors {o}" for o in silent_rows]
    y = {t: i for i, t in enumerate(reversed(rows))}
    tab = [to_hex(c) for c in matplotlib.colormaps["tab20"].colors]  # type: ignore[attr-defined]
    owners: dict[str, str] = {}
    for s in sorted(tl.slices, key=lambda s: (s.start_ns, s.track, s.name)):
        if s.track in y and tl.kinds[s.track] != "vcpu" and s.name not in owners:
            owners[s.name] = tab[len(owners) % len(tab)]
    # group per (row, colour): one broken_barh call each
    groups: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    seen: dict[str, str] = {}
    for s in tl.slices:
        if s.track not in y:
            continue
        if tl.kinds[s.track] == "vcpu":
            color, key = (GUEST_MODE, "guest mode") if s.name == "guest" else (VM_EXIT, "VM-exit")
        else:
            color, key = owners[s.name], s.name
        seen.setdefault(key, color)
        groups[(s.track, color)].append((s.start_ns / 1e6, (s.end_ns - s.start_ns) / 1e6))
    for (track, color), ranges in sorted(groups.items()):
        ax.broken_barh(ranges, (y[track] - 0.4, 0.8), facecolors=color, linewidth=0)
    for owner in silent_rows:
        ranges = [(s["start_ns"] / 1e6, s["duration_ns"] / 1e6) for s in silent if s["owner"] == owner]
        ax.broken_barh(
            ranges, (y[f"silent errors {owner}"] - 0.4, 0.8), facecolors="none", edgecolors=SILENT, hatch="///"
        )
    for s in silent:  # a light band over the whole timeline while any counter is silent
        ax.axvspan(s["start_ns"] / 1e6, s["end_ns"] / 1e6, color=SILENT, alpha=0.06, linewidth=0)
    if silent:
        seen["silent error (guest counter enabled, not counting)"] = SILENT
    pmis = [(it.t_ns / 1e6, y[it.track]) for it in tl.instants if it.name == "PMI" and it.track in y]
    if pmis:
        ax.scatter([p[0] for p in pmis], [p[1] for p in pmis], marker="|", color="black", s=80, label="PMI")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(list(reversed(rows)), fontsize=7)
    ax.set_xlim(0, max(tl.end_ns, 1) / 1e6)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("time (ms)")
    ax.set_title(_title(report), fontsize=10)
    handles = [Patch(color=c, label=k) for k, c in sorted(seen.items())[:40]]
    if handles:
        ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0)
    events = [e for e in report["events"] if e["truth"] or e["value"]]
    labels = [
        f"{e['scope']} {e['label']}" + (f" cpu{e['cpu']}" if e["scope"] == "host" and e["cpu"] >= 0 else "")
        for e in events
    ]
    errs = [e["scaled_error_pct"] if e["scaled_error_pct"] is not None else 0.0 for e in events]
    ax2.bar(range(len(events)), errs, color=[VM_EXIT if abs(v) >= 0.5 else GUEST_MODE for v in errs])
    ax2.axhline(0, color="black", linewidth=0.5)
    ax2.set_xticks(range(len(events)))
    ax2.set_xticklabels(labels, rotation=30, ha="right", fontsize=6)
    ax2.set_ylabel("error vs truth (%, scaled)")
    ax2.set_title("per-event error (perf-stat scaled count vs ground truth)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})


# ---- sweeps ---------------------------------------------------------------------------------
SWEEP_METRICS = (
    ("cycles_per_exit", "cycles per exit"),
    ("host_lost_pct", "host lost share (%)"),
    ("guest_mean_abs_error_pct", "guest mean |error| (%, scaled)"),
)


def sweep_axis(rows: list[dict[str, Any]], x: str | None = None) -> str:
    """The swept parameter to plot against: `x`, or the first grid key with several values."""
    keys = list(dict.fromkeys(k for r in rows for k in (r.get("grid") or {})))
    if x is not None:
        if x not in keys:
            from vpmu_core.errors import ConfigError

            raise ConfigError("--x", f"{x!r} is not a grid key of this sweep", ", ".join(keys) or "none")
        return x
    for k in keys:
        if len({repr(r["grid"].get(k)) for r in rows}) > 1:
            return k
    if keys:
        return keys[0]
    from vpmu_core.errors import ConfigError

    raise ConfigError("sweep", "no --grid parameter to plot against (run the sweep with --grid)", "a sweep with --grid")


def plot_sweep(
    rows: list[dict[str, Any]], path: str | IO[bytes], x: str | None = None, width: int = 1600, height: int = 900
) -> None:
    """Cycles per exit, host loss and guest error against the swept parameter `x`."""
    from vpmu_core.metrics.render import mode_label, yaml_value

    key = sweep_axis(rows, x)
    lines: dict[str, list[tuple[Any, dict[str, Any]]]] = defaultdict(list)
    scenarios = {r["scenario"] for r in rows}
    for r in rows:
        grid = r.get("grid") or {}
        others = " ".join(f"{k}={yaml_value(v)}" for k, v in grid.items() if k != key)
        label = " ".join(
            p for p in (r["scenario"] if len(scenarios) > 1 else "", mode_label(r["composition"]), others) if p
        )
        lines[label].append((grid.get(key), r["summary"]))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for pts in lines.values() for v, _ in pts)
    cats = list(dict.fromkeys(repr(v) for pts in lines.values() for v, _ in pts))
    fig, dpi = _figure(width, height)
    axes = fig.subplots(1, len(SWEEP_METRICS))
    for ax, (metric, title) in zip(axes, SWEEP_METRICS, strict=True):
        for label, pts in sorted(lines.items()):
            pts = sorted(pts, key=lambda p: p[0]) if numeric else pts
            xs = [p[0] if numeric else cats.index(repr(p[0])) for p in pts]
            ax.plot(xs, [p[1].get(metric, 0.0) for p in pts], marker="o", label=label)
        if not numeric:
            ax.set_xticks(range(len(cats)))
            ax.set_xticklabels(cats, rotation=30, ha="right", fontsize=7)
        ax.set_xlabel(key)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"vpmu sweep: {len(rows)} points against {key}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
