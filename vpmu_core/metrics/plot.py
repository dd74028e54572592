"""`vpmu plot`: a PNG of a run (matplotlib, Agg backend, headless).

Top: ownership timeline, one row per counter track (who owned each physical or virtual
counter over time) and per vCPU (guest mode vs VM-exits), PMIs as ticks. Bottom: per
event error (counted vs ground truth, %) as bars.
"""

from __future__ import annotations

from typing import IO, Any

from vpmu_core.metrics.timeline import Timeline


def plot_run(tl: Timeline, report: dict[str, Any], path: str | IO[bytes], width: int = 1600, height: int = 900) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax, ax2 = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 2]})
    tracks = [t for t in tl.tracks() if tl.kinds[t] in ("counter", "guest_counter", "vcpu")]
    y = {t: i for i, t in enumerate(reversed(tracks))}
    from matplotlib.colors import to_hex

    tab = [to_hex(c) for c in matplotlib.colormaps["tab20"].colors]  # type: ignore[attr-defined]
    owners: dict[str, str] = {}
    for s in sorted(tl.slices, key=lambda s: (s.start_ns, s.track, s.name)):
        if s.track in y and tl.kinds[s.track] != "vcpu" and s.name not in owners:
            owners[s.name] = tab[len(owners) % len(tab)]
    seen: dict[str, str] = {}
    for s in tl.slices:
        if s.track not in y:
            continue
        if tl.kinds[s.track] == "vcpu":
            color = "#55A868" if s.name == "guest" else "#C44E52"
            key = "guest mode" if s.name == "guest" else "VM-exit"
        else:
            color = owners[s.name]
            key = s.name
        seen.setdefault(key, color)
        ax.broken_barh(
            [(s.start_ns / 1e6, (s.end_ns - s.start_ns) / 1e6)], (y[s.track] - 0.4, 0.8), facecolors=color, linewidth=0
        )
    pmis = [(it.t_ns / 1e6, y[it.track]) for it in tl.instants if it.name == "PMI" and it.track in y]
    if pmis:
        ax.scatter([p[0] for p in pmis], [p[1] for p in pmis], marker="|", color="black", s=80, label="PMI")
    ax.set_yticks(range(len(tracks)))
    ax.set_yticklabels(list(reversed(tracks)), fontsize=7)
    ax.set_xlim(0, max(tl.end_ns, 1) / 1e6)
    ax.set_xlabel("time (ms)")
    comp = report["composition"]
    ax.set_title(
        f"{report.get('scenario', {}).get('name') or 'run'}: {comp['cpu']}, mode {comp['mode']} - counter ownership",
        fontsize=10,
    )
    handles = [Patch(color=c, label=k) for k, c in sorted(seen.items())[:40]]
    if handles:
        ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0)
    events = [e for e in report["events"] if e["truth"] or e["value"]]
    labels = [
        f"{e['scope']} {e['label']}" + (f" cpu{e['cpu']}" if e["scope"] == "host" and e["cpu"] >= 0 else "")
        for e in events
    ]
    errs = [e["error_pct"] if e["error_pct"] is not None else 0.0 for e in events]
    ax2.bar(range(len(events)), errs, color=["#C44E52" if abs(v) >= 0.5 else "#55A868" for v in errs])
    ax2.axhline(0, color="black", linewidth=0.5)
    ax2.set_xticks(range(len(events)))
    ax2.set_xticklabels(labels, rotation=30, ha="right", fontsize=6)
    ax2.set_ylabel("error vs truth (%)")
    ax2.set_title("per-event error (counted vs ground truth)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
