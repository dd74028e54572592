"""KVM's reuse of an unchanged event done in place (`reprogram_counter` -> `pmc_pause_counter`
+ `pmc_resume_counter`, `PerfSubsystem.reprogram_in_place`) is exactly the three perf calls
with their two reschedules: random guest and host programs give the same report, the same
perf event state (counts, times, counters, periods, truth), the same active order and the
same physical registers with the in-place step as with it refused."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import vpmu_core
from emu_helpers import EN, EVENT_CODES, INT, OS, USR, make_host
from vpmu_core.events import EventKind
from vpmu_core.perf.core import PerfSubsystem

MODELS = [
    m for m in ("intel/icelake", "intel/skylake", "amd/zen4", "amd/k8") if m in __import__("emu_helpers").AVAILABLE
]
SEEDS = range(12)
KINDS = (EventKind.INSTRUCTIONS, EventKind.BRANCHES, EventKind.CYCLES)


def _event_state(host: Any) -> list[tuple[Any, ...]]:
    out = []
    for e in host.perf.events:
        out.append(
            (
                e.id,
                e.state.name,
                e.count,
                e.enabled_ns,
                e.running_ns,
                e._tstamp,
                e.idx,
                e.prev_idx,
                e.active_cpu,
                e.period,
                e.period_left,
                e.samples,
                e.truth,
                e.truth_start,
                e.truth_open,
                e.blocked_by,
                e._start_raw,
            )
        )
    return out


def _run(cpu: str, seed: int) -> tuple[str, list[Any], int]:
    """One random program; returns (report JSON, final state, in-place steps taken)."""
    rnd = random.Random(seed)
    host = make_host(cpu, cpus=1, seed=seed)
    vm = host.create_vm(
        vcpus=1, pin=[0], exits=vpmu_core.ExitProfile(rate_per_s=rnd.choice([0, 20_000, 200_000]), fastpath_share=0.5)
    )
    v = vm.vcpus[0]
    if seed % 2:
        # a host task on the same CPU: the vCPU is preempted (sched out / in) on the way
        host.spawn_task("noisy", cpu=0).execute(vpmu_core.Work(instructions=10**9, cycles=10**9))
    pmu = v.pmu
    codes = EVENT_CODES[pmu.vendor]
    gps = [p for p in pmu.pmcs if not p.is_fixed]
    fixed_ctrl = pmu.fixed_ctrl_msr()
    ctrl = pmu.global_msrs().get("ctrl")
    host_events: list[Any] = []
    trace: list[Any] = []
    for _ in range(60):
        op = rnd.randrange(10)
        if op <= 2:
            p = rnd.choice(gps)
            sel = codes[rnd.choice(KINDS)] | rnd.choice([USR | OS | EN, USR | OS | EN | INT, OS | EN, USR | EN, 0])
            v.wrmsr(pmu.eventsel_msr(p), sel)
            if rnd.random() < 0.5:
                # near the wrap, so emulated instructions overflow the counter
                near = (p.mask - rnd.randrange(4)) if rnd.random() < 0.5 else rnd.randrange(1 << 20)
                try:
                    v.wrmsr(pmu.counter_msrs(p)[0], near & p.mask)
                except vpmu_core.GuestFault:  # a legacy 32-bit write: sign-extends bit 31
                    v.wrmsr(pmu.counter_msrs(p)[0], near & 0xFFFF_FFFF)
                if ctrl is not None and rnd.random() < 0.5:
                    v.wrmsr(ctrl, pmu.all_counter_mask)
                for _ in range(rnd.randrange(4)):
                    v.cpuid(0)
        elif op == 3 and ctrl is not None:
            v.wrmsr(ctrl, rnd.choice([0, pmu.all_counter_mask, pmu.all_counter_mask & 0xF]))
        elif op == 4 and fixed_ctrl is not None:
            v.wrmsr(fixed_ctrl, rnd.choice([0, 0x333, 0xBBB, 0x3]))
        elif op == 5:
            attr = vpmu_core.PerfEventAttr(
                config=rnd.choice(["cycles", "instructions", "branches"]),
                pinned=rnd.random() < 0.4,
                exclude_guest=rnd.random() < 0.5,
                sample_period=rnd.choice([0, 0, 50_000]),
            )
            host_events.append(host.perf_event_open(attr, pid=-1, cpu=0))
        elif op == 6 and host_events:
            ev = rnd.choice(host_events)
            if ev.closed:
                continue
            act = rnd.randrange(3)
            if act == 0:
                ev.disable()
            elif act == 1:
                ev.enable()
            else:
                ev.close()
        elif op == 7 and seed % 2:
            host.advance(ns=rnd.randrange(1, 2_000_000))  # the host task runs, the vCPU is put
        else:
            n = rnd.randrange(1, 4000)
            v.execute(vpmu_core.Work(instructions=n, cycles=n * 2, branches=n // 7))
            for _ in range(rnd.randrange(1, 4)):
                v.cpuid(rnd.choice([0, 0xA]), 0)
            if rnd.random() < 0.3:
                trace.append(v.rdpmc(rnd.choice(gps).idx))
    trace.append([v.rdmsr(m) for p in gps for m in (pmu.counter_msrs(p)[0],)])
    state = [
        _event_state(host),
        [e.id for e in host.perf.ctx[0].active],
        sorted(host.cpus[0].pmu.snapshot().items()),
        trace,
        sorted(v.save_state()["pmu"].items()),
    ]
    taken = host.perf.stats.reschedules
    return json.dumps(host.report(), sort_keys=True, default=str), state, taken


@pytest.mark.parametrize("cpu", MODELS)
def test_in_place_reuse_equals_pause_period_enable(cpu: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"in_place": 0}
    real = PerfSubsystem.reprogram_in_place

    def counting(self: PerfSubsystem, ev: Any, period_of: Any) -> int | None:
        r = real(self, ev, period_of)
        calls["in_place"] += r is not None
        return r

    for seed in SEEDS:
        monkeypatch.setattr(PerfSubsystem, "reprogram_in_place", counting)
        fast = _run(cpu, seed)
        monkeypatch.setattr(PerfSubsystem, "reprogram_in_place", lambda self, ev, period_of: None)
        slow = _run(cpu, seed)
        assert fast[0] == slow[0], seed
        assert fast[1] == slow[1], seed
        assert fast[2] == slow[2], seed
    # the in-place step really ran (programs without reuse would prove nothing)
    assert calls["in_place"] > 10 * len(SEEDS)


def test_in_place_declines_when_a_group_waits() -> None:
    """A flexible host event waiting for a counter could take the freed one in the
    reschedule after the pause: perf declines and KVM makes the three calls."""
    host = make_host("intel/icelake", cpus=1)
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu_core.ExitProfile(rate_per_s=0))
    v = vm.vcpus[0]
    sel = v.pmu.eventsel_msr(v.pmu.pmcs[0])
    v.wrmsr(sel, EVENT_CODES["intel"][EventKind.INSTRUCTIONS] | USR | OS | EN)
    v.wrmsr(v.pmu.global_msrs()["ctrl"], 1)
    v.cpuid(0)
    kp = v.mode_state.pmcs[0]
    ev = kp.perf_event
    assert ev is not None and ev.state.name == "ACTIVE"
    assert host.perf.reprogram_in_place(ev, lambda count: 1 << 20) is not None
    for _ in range(12):
        host.perf_event_open(vpmu_core.PerfEventAttr(config="cycles"), pid=-1, cpu=0)
    v.cpuid(0)
    assert ev.state.name == "ACTIVE"
    before = kp.counter
    assert host.perf.reprogram_in_place(ev, lambda count: 1 << 20) is None
    assert kp.counter == before


class _ReportAlways(dict):  # type: ignore[type-arg]
    """A `silent_reported` that never matches: every state goes to the tracker."""

    def get(self, key: Any, default: Any = None) -> Any:
        return object()

    def __delitem__(self, key: Any) -> None:
        self.pop(key, None)


@pytest.mark.parametrize("cpu", MODELS[:2])
def test_silent_errors_reported_on_change_equal_reporting_every_state(
    cpu: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """silent.update tells the tracker only what changed; the intervals are those of
    telling it every counter's state at every evaluation."""
    import vpmu_mode_emulated.mode as mode_mod
    from vpmu_mode_emulated.kvm_pmc import KvmPmu

    class Always(KvmPmu):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self.silent_reported = _ReportAlways()

    intervals = 0
    for seed in SEEDS:
        fast = _run(cpu, seed)
        monkeypatch.setattr(mode_mod, "KvmPmu", Always)
        slow = _run(cpu, seed)
        monkeypatch.undo()
        assert fast[0] == slow[0], seed
        assert fast[1] == slow[1], seed
        intervals += len(json.loads(fast[0])["silent_errors"])
    assert intervals > 0  # the programs do make guest counters silent
