"""How long `vpmu plot` takes: the simulation (traced) and the drawing, separately.

    .venv/bin/python benchmarks/bench_plot.py                 # cloud_mix, 1 simulated second
    .venv/bin/python benchmarks/bench_plot.py --sustained     # ... with the tenants kept busy
    .venv/bin/python benchmarks/bench_plot.py --legacy        # also time one artist per slice

cloud_mix's guests finish their work after about 30 ms, so `--set duration_ns=1e9` alone
traces few slices; `--sustained` queues 40x the tenants' work so the whole second is busy
(~67,000 slices). `--legacy` draws the same timeline the old way (one `broken_barh` call
per slice) for comparison. Timings only: nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import io
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="cloud_mix")
    ap.add_argument("--duration-ns", type=int, default=1_000_000_000)
    ap.add_argument("--sustained", action="store_true")
    ap.add_argument("--legacy", action="store_true")
    args = ap.parse_args()

    from vpmu_core.cli.app import load_catalog
    from vpmu_core.metrics.plot import plot_run
    from vpmu_core.scenario.loader import load
    from vpmu_core.scenario.runner import run_scenario

    sets = [f"duration_ns={args.duration_ns}"]
    if args.sustained:
        sets += ["vms.0.work.0.repeat=40", "vms.1.work.0.repeat=40"]
    cat = load_catalog()
    scn, _ = load(args.scenario, sets=sets, catalog=cat)
    import matplotlib  # noqa: F401 - import time is not drawing time

    t0 = time.perf_counter()
    res = run_scenario(scn, catalog=cat, trace=True)
    t1 = time.perf_counter()
    plot_run(res.timeline, res.report, io.BytesIO())
    t2 = time.perf_counter()
    print(
        f"{args.scenario} {sets}: {len(res.timeline.slices):,} slices; "
        f"simulate+trace {t1 - t0:.2f} s, plot {t2 - t1:.2f} s"
    )
    if args.legacy:
        t3 = time.perf_counter()
        _legacy(res.timeline)
        print(f"legacy plot (one broken_barh per slice): {time.perf_counter() - t3:.2f} s")


def _legacy(tl: object) -> None:
    """The drawing loop `vpmu plot` had before grouping: one matplotlib call per slice."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 9), dpi=100)
    ax = fig.subplots()
    tracks = [t for t in tl.tracks() if tl.kinds[t] in ("counter", "guest_counter", "vcpu")]  # type: ignore[attr-defined]
    y = {t: i for i, t in enumerate(tracks)}
    for s in tl.slices:  # type: ignore[attr-defined]
        if s.track in y:
            ax.broken_barh([(s.start_ns / 1e6, (s.end_ns - s.start_ns) / 1e6)], (y[s.track] - 0.4, 0.8), linewidth=0)
    fig.tight_layout()
    fig.savefig(io.BytesIO(), format="png")


if __name__ == "__main__":
    main()
