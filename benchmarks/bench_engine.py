"""Engine speed, printed as ratios (not a pass/fail test).

1. Simulated VM-exits per wall second (each handled one by one) for one vCPU with 4 active guest counters, and the
   ratio to a bare Python loop of the same iteration count (how many plain loop iterations
   one simulated exit costs).
2. Host perf reschedule time with 100 vs 1000 host events on one CPU (ratio; a linear
   scheduler gives ~10).

Usage: python benchmarks/bench_engine.py [--cpu toy/basic] [--mode reference]
"""

from __future__ import annotations

import argparse
import time

import vpmu_core as vpmu
from vpmu_core.testing import toy


def compose(cpu: str, mode: str) -> object:
    """Installed plugins plus the toy fixtures (toy/basic, reference)."""
    from vpmu_core.plugins.discovery import load_entry_points

    loaded, _ = load_entry_points()
    return vpmu.compose(cpu=cpu, mode=mode, plugins=loaded + [("toy", toy)])


def bench_exits(cpu: str, mode: str, exits_wanted: int = 100_000) -> tuple[float, float]:
    host = compose(cpu, mode)
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=1_000_000, fastpath_share=0.5))
    for _ in range(4):
        vm.guest_perf.perf_event_open(vpmu.PerfEventAttr(config="instructions", pinned=True), cpu=0)
    v = vm.vcpus[0]
    cycles = exits_wanted * host.freq_hz // 1_000_000
    t0 = time.perf_counter()
    v.execute(vpmu.Work(instructions=cycles, branches=cycles // 10))
    dt = time.perf_counter() - t0
    n = v.stats.total_exits
    t0 = time.perf_counter()
    acc = 0
    for i in range(n):
        acc += i
    bare = time.perf_counter() - t0
    return n / dt, dt / bare


def bench_resched(n: int) -> float:
    host = compose("toy/basic", "reference")
    for i in range(n):
        host.perf_event_open(vpmu.PerfEventAttr(config="cycles", pinned=i < 2), pid=-1, cpu=0)
    perf = host.perf
    reps = 50
    t0 = time.perf_counter()
    for _ in range(reps):
        perf.resched(0)
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", default="toy/basic")
    ap.add_argument("--mode", default="reference")
    args = ap.parse_args()
    rate, ratio = bench_exits(args.cpu, args.mode)
    print(f"vm-exits per wall second ({args.cpu}, {args.mode}, 4 guest counters, one by one): {rate:,.0f}")
    print(f"  one simulated exit costs {ratio:,.0f} bare-loop iterations")
    r100, r1000 = bench_resched(100), bench_resched(1000)
    print(f"reschedule: 100 events {r100 * 1e6:,.0f} us, 1000 events {r1000 * 1e6:,.0f} us, ratio {r1000 / r100:.1f}")


if __name__ == "__main__":
    main()
