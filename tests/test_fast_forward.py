"""The exact fast-forward of background VM-exits (vpmu_core/hv/fast_forward.py).

Every check compares a fast-forwarded run with its one-by-one twin on the whole state (every
value reachable from the host, hv/state_walk.py), not on a few figures: a fast-forward that
is right about counts but wrong about a time or a ledger line fails here. The planted-bug
tests prove the comparison can fail.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

import vpmu_core as vpmu
from tests.golden_corpus import cases, golden_path, render
from vpmu_core.api import ExitClock, ExitConstant, FastForwardRules
from vpmu_core.engine.exits import ExitProcess
from vpmu_core.hv import fast_forward as ffm
from vpmu_core.hv import state_walk
from vpmu_core.perf.event import PerfEvent
from vpmu_core.scenario.runner import FastForwardMismatch

#: the shipped rationing rules, saved before the autouse fixture replaces them
DEFAULT_RULES = {
    n: getattr(ffm, n)
    for n in (
        "WARMUP_EXITS",
        "MIN_TICK_EXITS",
        "PROBE_SHARE",
        "PROBE_TIME_SHARE",
        "FREE_PROBES",
        "COOLDOWN_AFTER",
        "MIN_BATCH",
        "MAX_UNKNOWN",
    )
}


@pytest.fixture(autouse=True)
def _eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here learns from the first exit, probes without a time budget and never
    backs off. Those rules only decide how fast results come, never what they are, and
    with them on, a test would depend on the wall clock (the probe budget) and on short
    runs never fast-forwarding (the shipped scenarios have a few hundred exits per vCPU)."""
    monkeypatch.setattr(ffm, "WARMUP_EXITS", 0)
    monkeypatch.setattr(ffm, "MIN_TICK_EXITS", 0)
    monkeypatch.setattr(ffm, "PROBE_SHARE", 1)
    monkeypatch.setattr(ffm, "PROBE_TIME_SHARE", float("inf"))
    monkeypatch.setattr(ffm, "FREE_PROBES", 1 << 30)
    monkeypatch.setattr(ffm, "COOLDOWN_AFTER", 1 << 30)
    monkeypatch.setattr(ffm, "MIN_BATCH", 0)
    monkeypatch.setattr(ffm, "MAX_UNKNOWN", 1.0)


PLACEMENTS = [
    ("emulated", {}),
    ("mediated", {"switch_at": "run_loop"}),
    ("mediated", {"switch_at": "exit"}),
    ("mediated", {"switch_at": "vcpu_run"}),
]


def _busy_host(mode: str, opts: dict[str, str], ff: bool, host_events: int) -> vpmu.Host:
    """1M exits/s, a sampling guest, host events (one of them sampling) on the vCPU's CPU."""
    host = vpmu.compose(cpu="intel/icelake", mode=mode, mode_options=opts, cpus=1)
    host.fast_forward = ff
    for i in range(host_events):
        attr = vpmu.PerfEventAttr(
            config="cycles" if i % 2 else "instructions", exclude_guest=True, sample_period=50_000 if i == 2 else 0
        )
        host.perf_event_open(attr, pid=-1, cpu=0)
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=1_000_000, fastpath_share=0.5))
    gp = vm.guest_perf
    gp.perf_event_open(vpmu.PerfEventAttr(config="instructions", sample_period=1_000_003), cpu=0)
    for ev in ("cycles", "branches", "branch-misses"):
        gp.perf_event_open(vpmu.PerfEventAttr(config=ev), cpu=0)
    v = vm.vcpus[0]
    cycles = 6_000 * host.freq_hz // 1_000_000
    v.execute(vpmu.Work(instructions=cycles, cycles=cycles, branches=cycles // 10))
    v.execute(vpmu.Work(instructions=cycles // 3, cycles=cycles // 2, branches=cycles // 10, cpl=3))
    return host


@pytest.mark.parametrize("host_events", [0, 3])
@pytest.mark.parametrize(("mode", "opts"), PLACEMENTS, ids=["emulated", "run_loop", "exit", "vcpu_run"])
def test_whole_state_matches_one_by_one(mode: str, opts: dict[str, str], host_events: int) -> None:
    fast = _busy_host(mode, opts, True, host_events)
    slow = _busy_host(mode, opts, False, host_events)
    ff = fast.vms[0].vcpus[0].fast_forward
    assert ff is not None and ff.probes > 0, "the fast-forward never looked: this test checks nothing"
    if opts.get("switch_at") == "exit":
        # every exit puts and loads the context: the mode's declared rules set the fields
        # the load writes, so exits batch all the same
        learned = [k for st in ff.sigs.values() for k in st.kinds.values() if k is not None]
        assert any(k.rules and not k.needs_real for k in learned)
    assert ff.batched_exits > 0, "the fast-forward never ran: this test checks nothing"
    assert slow.vms[0].vcpus[0].fast_forward is None
    a, b = ffm.whole_view(fast), ffm.whole_view(slow)
    assert state_walk.diff(a, b) == []
    assert fast.report() == slow.report()


@pytest.mark.parametrize(("mode", "opts"), PLACEMENTS, ids=["emulated", "run_loop", "exit", "vcpu_run"])
def test_shipped_rules_keep_the_whole_state(mode: str, opts: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """With the shipped rationing rules (warm-up, probe budget, back-off; which exits they
    let batch depends on the wall clock) the state is the one-by-one state all the same."""
    for name, value in DEFAULT_RULES.items():
        monkeypatch.setattr(ffm, name, value)
    fast = _busy_host(mode, opts, True, 3)
    slow = _busy_host(mode, opts, False, 3)
    assert state_walk.diff(ffm.whole_view(fast), ffm.whole_view(slow)) == []


@pytest.mark.parametrize(("rate", "learns"), [(20_000, False), (1_000_000, True)])
def test_vcpus_with_few_exits_per_host_tick_never_learn(
    rate: int, learns: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the shipped rules, a vCPU whose exits are too sparse for a batch to repay its
    planning (20k/s: 80 per 4 ms host tick) has no fast-forward at all; at 1M/s it has one."""
    monkeypatch.setattr(ffm, "MIN_TICK_EXITS", DEFAULT_RULES["MIN_TICK_EXITS"])
    host = vpmu.compose(cpu="intel/icelake", mode="emulated", cpus=1)
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=rate))
    assert (vm.vcpus[0].fast_forward is not None) is learns


@pytest.mark.parametrize(("mode", "opts"), [("emulated", {}), ("mediated", {"switch_at": "vcpu_run"})])
def test_shipped_rules_batch_most_exits_of_a_sampling_guest(
    mode: str, opts: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a timing: with the shipped rules (but for the wall-clock probe budget, which
    would make this depend on the machine) 50k exits of a sampling guest at 1M/s are mostly
    batched. A refused probe or a kind not learned yet must not back off exponentially: it
    did, and ran thousands of exits one by one past each sample (30k of 50k batched)."""
    for name, value in DEFAULT_RULES.items():
        monkeypatch.setattr(ffm, name, value)
    monkeypatch.setattr(ffm, "PROBE_TIME_SHARE", float("inf"))
    host = vpmu.compose(cpu="intel/icelake", mode=mode, mode_options=opts, cpus=1)
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=1_000_000, fastpath_share=0.5))
    vm.guest_perf.perf_event_open(vpmu.PerfEventAttr(config="instructions", sample_period=1_000_003), cpu=0)
    for ev in ("cycles", "branches", "branch-misses"):
        vm.guest_perf.perf_event_open(vpmu.PerfEventAttr(config=ev), cpu=0)
    v = vm.vcpus[0]
    cycles = 50_000 * host.freq_hz // 1_000_000
    v.execute(vpmu.Work(instructions=cycles, cycles=cycles, branches=cycles // 10))
    ff = v.fast_forward
    assert ff is not None and len(v.pmis) > 100
    assert ff.batched_exits > 0.85 * v.stats.total_exits


def test_emulated_fast_forwards_most_exits_once_learned() -> None:
    """Not a timing: the share of exits that ran in batches once the exits are learned (a
    fast-forward that silently stopped batching would keep every report right and this
    share low). The first run pays the warm-up and the probes; the second is all steady."""
    host = vpmu.compose(cpu="intel/icelake", mode="emulated", cpus=1)
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=1_000_000, fastpath_share=0.5))
    vm.guest_perf.perf_event_open(vpmu.PerfEventAttr(config="instructions", sample_period=1_000_003), cpu=0)
    v = vm.vcpus[0]
    cycles = 10_000 * host.freq_hz // 1_000_000
    work = vpmu.Work(instructions=cycles, cycles=cycles, branches=cycles // 10)
    v.execute(work)
    ff = v.fast_forward
    assert ff is not None
    exits0, batched0 = v.stats.total_exits, ff.batched_exits
    v.execute(work)
    assert ff.batched_exits - batched0 > 0.9 * (v.stats.total_exits - exits0)


def _plant(monkeypatch: pytest.MonkeyPatch, attr: str, wrong: Callable[[ffm.ExitKind], Any]) -> None:
    """Plant a bug in what the fast-forward learns: every learned kind's `attr` replaced by
    `wrong(kind)`."""
    real_learn = ffm._learn

    def bad_learn(
        a: ffm.Probe, b: ffm.Probe, vcpu: object, declared: ffm.Declared | None = None
    ) -> ffm.ExitKind | None:
        k = real_learn(a, b, vcpu, declared)  # type: ignore[arg-type]
        if k is not None:
            setattr(k, attr, wrong(k))
        return k

    monkeypatch.setattr(ffm, "_learn", bad_learn)


def test_planted_wrong_delta_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant a bug (each learned exit adds one cycle too many to the cost ledger) and check
    the whole-state comparison sees it."""
    _plant(monkeypatch, "deltas", lambda k: [(p, d + 1 if p[0] == "ledger" else d) for p, d in k.deltas])
    fast = _busy_host("emulated", {}, True, 0)
    slow = _busy_host("emulated", {}, False, 0)
    assert state_walk.diff(ffm.whole_view(fast), ffm.whole_view(slow))


class _Ev:
    """The time fields of a perf event, driven by PerfEvent's own code."""

    _sync = PerfEvent._sync
    _set_ticking = PerfEvent._set_ticking

    def __init__(self) -> None:
        self.subsystem = SimpleNamespace(ticking_log=None)
        self.enabled_ns = self.running_ns = self._tstamp = 0
        self._t_enabled, self._t_running = True, False


@pytest.mark.parametrize("t0", [123_456_789, 3 * 10**13 + 7])  # the clock after 40 ms, after 3 hours
@pytest.mark.parametrize("bulk", [False, True], ids=["loop", "arrays"])
def test_retime_equals_perf_syncing_at_each_transition(bulk: bool, t0: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Perf times after a batch: `_retime` (its loop, and its array form for long batches)
    against PerfEvent._set_ticking called at every transition of every exit at its exact
    cycle (nanosecond floors depend on position)."""
    monkeypatch.setattr(ffm, "RETIME_BULK", 0 if bulk else 1 << 30)
    freq = 2_900_000_000
    rng = random.Random(3)
    kinds = {
        ("a", False, False): ffm.ExitKind(1234, [], False, [(1, 100, True, True), (1, 1100, True, False)], 0),
        ("b", True, False): ffm.ExitKind(777, [], False, [], 0),
    }
    exits = [rng.choice(list(kinds)) for _ in range(300)]
    pos, t = [], 0
    for ex in exits:
        pos.append(t)
        t += kinds[ex].dur + rng.randrange(1, 5000)
    ref = _Ev()
    ref._set_ticking(t0 * 10**9 // freq, True, False)  # type: ignore[arg-type]
    for ex, p in zip(exits, pos, strict=True):
        for _, off, en, run in kinds[ex].log:
            ref._set_ticking((t0 + p + off) * 10**9 // freq, en, run)  # type: ignore[arg-type]
    got = _Ev()
    got._set_ticking(t0 * 10**9 // freq, True, False)  # type: ignore[arg-type]
    times0 = {1: (got.enabled_ns, got.running_ns, got._tstamp, True, False)}
    ff = ffm.FastForward.__new__(ffm.FastForward)
    ff.vcpu = SimpleNamespace(host=SimpleNamespace(freq_hz=freq))  # type: ignore[assignment]
    ff._retime(times0, {1: got}, exits, pos, kinds, t0)  # type: ignore[arg-type,dict-item]
    assert (got.enabled_ns, got.running_ns, got._tstamp) == (ref.enabled_ns, ref.running_ns, ref._tstamp)
    # one window over the whole batch (no retime) would be off: the check can fail
    assert ref.running_ns != (t0 + pos[-1] + 1100) * 10**9 // freq - (t0 + pos[0] + 100) * 10**9 // freq


def test_push_back_replays_the_same_stream() -> None:
    """Exits drawn ahead and given back come out again, with their gaps, then the stream goes
    on as if they had never been drawn early (the planner's look-ahead changes nothing)."""
    prof = vpmu.ExitProfile(rate_per_s=100_000, fastpath_share=0.4)
    ref, ep = ExitProcess(prof, 3_000_000_000, 7), ExitProcess(prof, 3_000_000_000, 7)
    want = []
    for _ in range(60):
        g = ref.next_gap
        want.append((g, ref.draw()))
    got: list[tuple[int, tuple[str, bool, bool]]] = []
    rng = random.Random(1)
    while len(got) < 60:
        gap_before = ep.next_gap
        ahead = []
        for _ in range(rng.randrange(1, 5)):
            ex = ep.draw()
            ahead.append((ex, ep.next_gap))
        ep.push_back(ahead, gap_before)
        for _ in range(rng.randrange(1, len(ahead) + 1)):
            g = ep.next_gap
            got.append((g, ep.draw()))
    assert got[:60] == want


def _drawn(ep: ExitProcess, m: int) -> list[tuple[tuple[str, bool, bool], int]]:
    out = []
    for _ in range(m):
        ex = ep.draw()
        out.append((ex, ep.next_gap))
    return out


@pytest.mark.parametrize("rate", [1e9, 3_000_000, 1_000_000, 20_000, 7.5, 1e-9])
def test_peek_gives_what_drawing_one_at_a_time_gives(rate: float) -> None:
    """`peek(m)` returns the exits and gaps of the next m draws (the planner's look-ahead),
    and `skip` leaves the stream where those draws would: over mean gaps from under a cycle
    (most gaps truncate to 1) to past int64's range (the scalar fallback)."""
    prof = vpmu.ExitProfile(rate_per_s=rate, fastpath_share=0.4, userspace_share=0.05)
    ref, ep = ExitProcess(prof, 3_000_000_000, 11), ExitProcess(prof, 3_000_000_000, 11)
    table = ep.exit_table()
    for m in (1, 7, 5000):
        codes, gaps = ep.peek(m)
        assert [(table[c], g) for c, g in zip(codes.tolist(), gaps, strict=True)] == _drawn(ref, m)
        ep.skip(m, gaps[-1])
    assert _drawn(ep, 50) == _drawn(ref, 50)


def _straddling_uniforms(mean: float) -> list[float]:
    """Uniform draws u whose gap `-log(1 - u) * mean` lies within an ulp or two of an
    integer, on both sides: pairs of neighbouring doubles 1 - u whose truncated gaps differ."""
    out = []
    for k in range(1, 600):
        x = math.exp(-k / mean)
        for _ in range(40):
            y = math.nextafter(x, 1.0)
            if int(-math.log(x) * mean) != int(-math.log(y) * mean):
                out += [1.0 - x, 1.0 - y]
                break
            x = y if -math.log(x) * mean > k else math.nextafter(x, 0.0)
    assert all(1.0 - (1.0 - x) == x for x in out)  # Sterbenz: 1 - u gives x back exactly
    return [u for u in out if 1.0 - u >= 0.5]


def test_peek_gaps_do_not_trust_numpy_log_next_to_an_integer(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy's log may differ from the C library's by an ulp; a gap is a truncated product,
    so next to an integer that ulp changes the gap. Planted: a log one ulp off (up or down,
    by position), on draws whose gaps straddle an integer; the gaps must still be
    `_draw_gap`'s, bit for bit."""
    import numpy as np

    from vpmu_core.engine.exits import exact_gaps

    mean = 1000.0
    us = _straddling_uniforms(mean)
    assert len(us) > 200
    want = [max(1, int(-math.log(1.0 - u) * mean)) for u in us]
    assert exact_gaps(np.array(us), mean) == want
    real_log = np.log

    class OffByOneUlp:
        def __getattr__(self, name: str) -> object:
            return getattr(np, name)

        @staticmethod
        def log(x: object) -> object:
            r = real_log(x)
            return np.where(np.arange(r.size) % 2 == 0, np.nextafter(r, np.inf), np.nextafter(r, -np.inf))

    monkeypatch.setitem(sys.modules, "numpy", OffByOneUlp())  # what exits.py imports
    assert exact_gaps(np.array(us), mean) == want


def test_no_mode_hook_means_one_by_one() -> None:
    """A mode that does not implement vpmu_fast_forward_state never fast-forwards."""
    host = vpmu.compose(cpu="intel/icelake", mode="emulated", cpus=1)
    host.hooks.fast_forward_state = lambda **kw: None  # the mode answers "not now" forever
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=1_000_000))
    v = vm.vcpus[0]
    v.execute(vpmu.Work(instructions=3_000_000, cycles=3_000_000))
    assert v.fast_forward is not None and v.fast_forward.batches == 0 and v.stats.total_exits > 500


@pytest.mark.parametrize("mode", ["emulated", "mediated:switch_at=run_loop", "mediated:switch_at=vcpu_run"])
def test_verify_switch_catches_a_planted_bug(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """VPMU_FF_VERIFY=1 shadows a scenario run with its one-by-one twin: with a planted bug
    it must raise, naming the values that moved apart."""
    from vpmu_core.cli.app import load_catalog
    from vpmu_core.scenario.loader import load
    from vpmu_core.scenario.runner import run_scenario

    _plant(monkeypatch, "deltas", lambda k: [(p, 2 * d if p[0] == "truth" else d) for p, d in k.deltas])
    monkeypatch.setenv("VPMU_FF_VERIFY", "1")
    cat = load_catalog()
    scn, _ = load("cloud_mix", mode=mode, sets=["duration_ns=20000000"], catalog=cat)
    with pytest.raises(FastForwardMismatch, match="truth"):
        run_scenario(scn, catalog=cat)


@pytest.fixture
def eager() -> None:
    """(The module's autouse `_eager` already applies: named for the tests that need it.)"""


@pytest.mark.parametrize("case", cases(), ids=str)
def test_verify_switch_passes_on_every_shipped_scenario(
    case: tuple[str, str], eager: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VPMU_FF_VERIFY=1 on every shipped scenario in every mode and placement, learning
    from the first exit: the whole state of the fast-forwarded run equals its one-by-one
    twin at every compared step, and the report is the golden one."""
    monkeypatch.setenv("VPMU_FF_VERIFY", "1")
    scenario, mode = case
    assert render(scenario, mode) == golden_path(scenario, mode).read_text()


@pytest.mark.parametrize(
    ("mode", "share"),
    [("emulated", 0.3), ("mediated:switch_at=vcpu_run", 0.3), ("mediated:switch_at=run_loop", 0.0)],
)
def test_shipped_scenarios_do_fast_forward_when_eager(mode: str, share: float, eager: None) -> None:
    """The corpus check above is not vacuous: with eager learning the shipped scenarios
    fast-forward a good share of their exits (under `run_loop` every slow exit puts and
    loads, runs for real, and batches soon stop paying: some, not most)."""
    from vpmu_core.cli.app import load_catalog
    from vpmu_core.scenario.loader import load
    from vpmu_core.scenario.runner import run_scenario

    cat = load_catalog()
    batched = exits = 0
    for name in ("cloud_mix", "default"):
        scn, _ = load(name, mode=mode, catalog=cat)
        host = run_scenario(scn, catalog=cat).host
        for vm in host.vms:
            for v in vm.vcpus:
                exits += v.stats.total_exits
                batched += v.fast_forward.batched_exits if v.fast_forward else 0
    assert batched > share * exits


def test_remembered_signatures_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A vCPU whose signature keeps changing (host events multiplexed through the counters)
    forgets its oldest signatures beyond MAX_SIGNATURES, and stays exact."""
    monkeypatch.setattr(ffm, "MAX_SIGNATURES", 2)
    fast = _busy_host("emulated", {}, True, 10)
    slow = _busy_host("emulated", {}, False, 10)
    ff = fast.vms[0].vcpus[0].fast_forward
    assert ff is not None and ff.probes > 2 and len(ff.sigs) <= 2
    assert state_walk.diff(ffm.whole_view(fast), ffm.whole_view(slow)) == []


# ---- positional fields (vpmu_fast_forward_rules) ----------------------------------------------
def _exit_host(ff: bool, host_events: int = 0, branch_misses: int = 0) -> vpmu.Host:
    """`mediated:switch_at=exit` (every exit puts and loads: positional fields), counting
    branch misses: with `branch_misses` a few, that counter leaves zero mid-run."""
    host = vpmu.compose(cpu="intel/icelake", mode="mediated", mode_options={"switch_at": "exit"}, cpus=1)
    host.fast_forward = ff
    for i in range(host_events):
        host.perf_event_open(
            vpmu.PerfEventAttr(config="cycles" if i % 2 else "instructions", exclude_guest=True), pid=-1, cpu=0
        )
    vm = host.create_vm(vcpus=1, pin=[0], exits=vpmu.ExitProfile(rate_per_s=1_000_000, fastpath_share=0.5))
    for ev in ("cycles", "branches", "branch-misses"):
        vm.guest_perf.perf_event_open(vpmu.PerfEventAttr(config=ev), cpu=0)
    cycles = 4_000 * host.freq_hz // 1_000_000
    vm.vcpus[0].execute(vpmu.Work(instructions=cycles, branches=cycles // 10, branch_misses=branch_misses))
    return host


def _ruled(host: vpmu.Host) -> list[ffm.ExitKind]:
    ff = host.vms[0].vcpus[0].fast_forward
    assert ff is not None
    return [k for st in ff.sigs.values() for k in st.kinds.values() if k is not None and k.rules and not k.needs_real]


def test_a_rule_off_by_one_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant a bug past the learning check (every clock rule one cycle early: the next put
    measures a blind window one cycle longer): the whole-state comparison sees it."""
    _plant(monkeypatch, "rules", lambda k: tuple(r._replace(c=r.c - 1) if r.op == ffm.CLOCK else r for r in k.rules))
    fast, slow = _exit_host(True), _exit_host(False)
    assert _ruled(fast) and fast.vms[0].vcpus[0].fast_forward.batched_exits > 0  # type: ignore[union-attr]
    assert any("blind" in d for d in state_walk.diff(ffm.whole_view(fast), ffm.whole_view(slow)))


@pytest.mark.parametrize("wrong", ["constant", "clock"])
def test_a_wrong_declared_rule_is_refused_at_learning(wrong: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mode that declares a field with a rule that does not reproduce it (its load time
    as a constant, its guest cycles as the clock): the rule fails on the probes, the exits
    run for real as without rules, and the state is the one-by-one state."""
    from vpmu_mode_mediated.mode import MediatedMode

    real_rules = MediatedMode.vpmu_fast_forward_rules

    def bad_rules(self: MediatedMode, vcpu: object) -> FastForwardRules | None:
        r = real_rules(self, vcpu)
        if r is None:
            return None
        field, rule = ("load_cycles", ExitConstant()) if wrong == "constant" else ("load_guest_cycles", ExitClock())
        return FastForwardRules({**r.fields, field: rule}, r.switched_counters)

    monkeypatch.setattr(MediatedMode, "vpmu_fast_forward_rules", bad_rules)
    fast, slow = _exit_host(True), _exit_host(False)
    assert fast.vms[0].vcpus[0].fast_forward.probes > 0  # type: ignore[union-attr]
    assert not _ruled(fast)
    assert state_walk.diff(ffm.whole_view(fast), ffm.whole_view(slow)) == []


def test_a_counter_leaving_zero_ends_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The put zeroes a non-zero counter and the load skips a write the hardware already
    holds (a zero): an exit costs more once a counter leaves zero. The batch stops before
    that (`_tests_room`); planted: without that horizon the state moves apart."""
    fast, slow = _exit_host(True, branch_misses=3), _exit_host(False, branch_misses=3)
    assert _ruled(fast) and fast.vms[0].vcpus[0].fast_forward.batched_exits > 0  # type: ignore[union-attr]
    assert state_walk.diff(ffm.whole_view(fast), ffm.whole_view(slow)) == []
    monkeypatch.setattr(ffm.FastForward, "_tests_room", lambda self, st, tests, cur: 1 << 62)
    bad = _exit_host(True, branch_misses=3)
    assert state_walk.diff(ffm.whole_view(bad), ffm.whole_view(slow))


def test_host_leftovers_in_switched_counters_stay_exact() -> None:
    """Host events count in the guest's counters during each exit; the load compares the
    guest's values with what they left: with several host events the state stays exact."""
    fast, slow = _exit_host(True, host_events=4), _exit_host(False, host_events=4)
    assert _ruled(fast) and fast.vms[0].vcpus[0].fast_forward.batched_exits > 0  # type: ignore[union-attr]
    assert state_walk.diff(ffm.whole_view(fast), ffm.whole_view(slow)) == []


def test_rules_stay_unused_where_the_exit_before_matters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `switch_at=run_loop` a slow exit's blind window counts the fastpath exits
    since the load, which leave the mode's fields alone: two probes may find it the same
    by chance (here, with the shipped rules), yet the slow exits must run for real
    (bulk_rules). Planted: with every exit taken as leaving the fields alike, they batch
    and the blind window moves apart."""
    for name, value in DEFAULT_RULES.items():
        monkeypatch.setattr(ffm, name, value)
    monkeypatch.setattr(ffm, "PROBE_TIME_SHARE", float("inf"))
    fast = _busy_host("mediated", {"switch_at": "run_loop"}, True, 0)
    slow = _busy_host("mediated", {"switch_at": "run_loop"}, False, 0)
    assert not _ruled(fast)
    assert state_walk.diff(ffm.whole_view(fast), ffm.whole_view(slow)) == []
    monkeypatch.setattr(ffm.Declared, "relative", lambda self, view, end, guest_cycles: ())
    bad = _busy_host("mediated", {"switch_at": "run_loop"}, True, 0)
    assert _ruled(bad)
    assert any("blind" in d for d in state_walk.diff(ffm.whole_view(bad), ffm.whole_view(slow)))
