"""perf_put_guest_context() right after perf_load_guest_context() restores the pass the load
saw (`PerfSubsystem._resume_plan`) instead of deciding every group again; the outcome must be
exactly the full pass's: states, counters, causes, counts, times, costs, the whole report.

Each sequence runs on two hosts built alike, one of them forced to reschedule fully on every
put; after every step both must agree on everything perf shows (the install tests' replay)."""

from __future__ import annotations

import random
from typing import Any

import pytest

import vpmu_core as vpmu
from tests.test_perf_install import CONFIGS, _snapshot, _toy, assert_replays_alike
from vpmu_core.perf.core import PerfSubsystem

A = vpmu.PerfEventAttr


def _force_full(perf: PerfSubsystem) -> None:
    perf._resume_plan = lambda cpu, s: None  # type: ignore[method-assign]


def _count_resumes(perf: PerfSubsystem) -> list[int]:
    hits = [0]
    real = perf._resume_plan

    def counted(cpu: int, s: Any) -> Any:
        plan = real(cpu, s)
        hits[0] += plan is not None
        return plan

    perf._resume_plan = counted  # type: ignore[method-assign]
    return hits


def _script(seed: int, steps: int) -> list[tuple[Any, ...]]:
    """Perf calls, time passing and many guest load/put pairs (some with a change between)."""
    rng = random.Random(seed)
    ops: list[tuple[Any, ...]] = []
    for _ in range(steps):
        r = rng.random()
        cfg = rng.choice(CONFIGS)
        cpu = rng.choice([0, 1])
        if r < 0.25:
            ops.append(("open", cfg, rng.random() < 0.2, rng.choice([0, 1, "task"]), rng.random() < 0.05))
        elif r < 0.30:
            ops.append(("sibling", cfg))
        elif r < 0.35:
            ops.append(("close", rng.random()))
        elif r < 0.40:
            ops.append(("disable", rng.random()))
        elif r < 0.45:
            ops.append(("enable", rng.random()))
        elif r < 0.55:
            ops.append(("advance", rng.choice([10_000, 300_000, 2_000_000, 5_000_000])))
        elif r < 0.60:
            ops.append(("resched", cpu))
        else:
            ops.append(("guest", cpu, True))
            if rng.random() < 0.3:
                ops.append(("advance", rng.choice([10_000, 300_000])))
            if rng.random() < 0.15:
                ops.append(rng.choice([("open", cfg, False, cpu, False), ("disable", rng.random()), ("resched", cpu)]))
            ops.append(("guest", cpu, False))
    return ops


@pytest.mark.parametrize("seed", range(60))
def test_put_guest_context_decides_as_a_full_reschedule(seed: int) -> None:
    ops = _script(seed, 120)
    fast, full = _toy(), _toy()
    hits = _count_resumes(fast.perf)
    _force_full(full.perf)
    assert_replays_alike(fast, full, ops, read=seed % 2 == 0)
    assert hits[0] > 0, "the sequence never took the resume path"


def test_guest_round_trips_match_full_reschedules_on_icelake() -> None:
    """The cloud host's shape: a pinned watchdog and a flexible profiler group per CPU, more
    flexible events than counters (multiplexing), and guest context round trips."""
    hosts = [vpmu.compose(cpu="intel/icelake", mode="emulated", cpus=1) for _ in range(2)]
    fast, full = hosts
    _force_full(full.perf)
    hits = _count_resumes(fast.perf)
    for host in hosts:
        host.perf_event_open(A(config="cycles", exclude_guest=True, pinned=True), pid=-1, cpu=0)
        g = host.perf_event_open(A(config="cycles", exclude_guest=True, sample_period=10_000_003), pid=-1, cpu=0)
        host.perf_event_open(A(config="instructions", exclude_guest=True), pid=-1, cpu=0, group=g)
        for i in range(10):
            host.perf_event_open(A(config=("branches", "instructions")[i % 2], exclude_guest=True), pid=-1, cpu=0)
        for k in range(40):
            host.perf.load_guest_context(0)
            host.advance(ns=100_000)
            host.perf.put_guest_context(0)
            host.advance(ns=(300_000, 2_000_000)[k % 2])
    assert hits[0] >= 35
    assert _snapshot(fast) == _snapshot(full)
    assert fast.report() == full.report()
