"""The exact fast-forward of background VM-exits (issue 14).

At a fixed point, a background exit round trip leaves every structural value as it was (the
PMU controls, the perf event states and counters, the mode's per-vCPU state) and only moves
accumulators (the cost ledger, exit statistics, ground truth, the clock, host events' counts
in the exit's window) by the same amount each time. This room learns that amount and adds
it in bulk, so a second of 1M exits/s costs a few dozen real exits, not a million.

How (each step exact, or the exit runs one by one as before):

1. *Signature*: at an exit point, the structural state of the vCPU, its CPU's PMU and perf
   events and the mode's `vpmu_fast_forward_state` answer (None: the mode does not take
   part, or is not at a fixed point now).
2. *Probe*: the first two exits of each kind (reason, fastpath, to userspace) at a
   signature run for real while the whole state is viewed before and after
   (hv/state_walk.py). The exit qualifies when it returns to the same signature, grows no
   new state, changes only integers and changes each by the same amount in both probes
   (an accumulator) or by different amounts (a last-value register, e.g. a guest counter
   saved at the put: exits of that kind then run for real, each at its exact point). Each perf event's enabled/running transitions inside the exit, with their cycle
   offsets, are recorded as well.
3. *Batch*: the following exits are drawn from the same random stream as one by one, up to
   a horizon strictly before the next host tick (mux rotation), the guest tick, the end of
   the slice or of the work, an exit kind not yet probed, and a counter wrap (no counter
   can take as many events as the batch holds, so sampling guests fast-forward between
   samples and every PMI is handled one by one at its exact point). Guest work runs as one
   span up to each real exit; every other exit adds its accumulators; perf times are recomputed
   from each exit's exact position (they are floors of nanoseconds, so position matters).

Off with `VPMU_FF=0`. `VPMU_FF_VERIFY=1` runs each scenario twice, with and without it, and
compares the whole state at every step (scenario/runner.py).
"""

from __future__ import annotations

import os
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from vpmu_core.hv import state_walk
from vpmu_core.hv.state_walk import Path

if TYPE_CHECKING:
    from vpmu_core.events import WorkCursor
    from vpmu_core.hv.vcpu import VCpu
    from vpmu_core.perf.event import PerfEvent

Exit = tuple[str, bool, bool]
#: at most one exit in this many is a probe (a probe views the state twice: milliseconds;
#: a short run with few exits stays one by one rather than pay for learning)
PROBE_SHARE = 128
#: probes beyond the first FREE_PROBES must have been paid for: one per PROBE_PAYBACK
#: exits batched (a signature that keeps changing, as perf multiplexing rotates, never
#: repays its learning)
FREE_PROBES = 24
PROBE_PAYBACK = 200
#: a vCPU's first exits run one by one: a vCPU with few exits never pays for learning
WARMUP_EXITS = 1000
#: a vCPU learns at all only if about this many of its exits fall in one host tick (the
#: mux rotation, a horizon no batch crosses). With fewer, batches are a few dozen exits,
#: and planning one costs about what running its exits does; the probes are then never
#: repaid (the cloud host second, 20k exits/s and 80 per 4 ms tick, ran 25% slower with
#: learning on and batched nothing under the other rules)
MIN_TICK_EXITS = 256
#: probing takes at most this share of the wall time since the warm-up. Only the speed
#: depends on the clock: which exits are learned or batched never changes a result (the
#: fast-forward is exact; tests/test_fast_forward.py sets it to infinity)
PROBE_TIME_SHARE = 0.1
#: ... beyond the first PROBE_GRACE_S seconds of probing, which are free: without them a
#: run's first probes wait for ten times their cost to pass (a 4 ms probe, 40 ms), and the
#: exits of a run of a second or two are mostly over before their kinds are learned
PROBE_GRACE_S = 0.05
#: after this many exit points in a row that cannot start a batch, skip looking for
#: 1, 2, 4, ... up to COOLDOWN_MAX exit points (a batch can start only on an exit that adds
#: accumulators alone; the mediated placements that switch at every exit have none)
COOLDOWN_AFTER = 8
COOLDOWN_MAX = 256
#: exit points to run one by one after a probe was refused by the rationing above, or a
#: batch was refused for kinds not probed yet
RATIONED_WAIT = 16
#: batches must add at least this many exits in bulk per exit they run for real
WORTH_IT = 3
#: a batch is planned only if about this many exits fit before its horizon
MIN_BATCH = 16
#: ... and if at most this share of the exits drawn are of kinds not learned yet
MAX_UNKNOWN = 0.02
#: signatures a vCPU remembers (what it learned at each, its pending probes' views)
MAX_SIGNATURES = 64
#: exits drawn ahead at most for one batch
MAX_BATCH = 8192
#: values whose change an exit's view must not show as an accumulator: perf times (recomputed
#: from positions), the exit process (its draws are the planner's), the PMU's caches (the
#: overflow headroom; the counter mask, filled on first use, which a batch may move)
SKIP_ATTRS = frozenset(
    {
        "enabled_ns",
        "running_ns",
        "_tstamp",
        "exit_process",
        "_headroom",
        "_all_counter_mask",
        "ticking_log",
        "fast_forward",
    }
)


def enabled() -> bool:
    """The default of `Host.fast_forward`: on, unless `VPMU_FF=0` (every exit one by one)."""
    return os.environ.get("VPMU_FF", "1") != "0"


def worth_learning(vcpu: VCpu) -> bool:
    """Whether `vcpu`'s exits come often enough for a fast-forward to pay (MIN_TICK_EXITS).
    Fixed per vCPU: the exit rate and the host tick length do not change."""
    mean_gap = vcpu.exit_process.mean_gap
    return mean_gap > 0 and vcpu.host.ns_to_cycles(vcpu.host.mux_interval_ns) >= MIN_TICK_EXITS * mean_gap


def verify_requested() -> bool:
    """`VPMU_FF_VERIFY=1`: scenario runs shadow the fast-forward with a one-by-one twin."""
    return os.environ.get("VPMU_FF_VERIFY", "0") not in ("", "0")


def whole_view(host: Any) -> dict[Path, Any]:
    """Everything of a host two runs can compare (the fast-forward's own caches left out)."""
    # perf times and the exit process are compared; the PMU's overflow-headroom cache is not
    # (a lower bound that only saves work: the fast-forward resets it)
    keep_times = SKIP_ATTRS - {"enabled_ns", "running_ns", "_tstamp", "exit_process"}
    return state_walk.comparable(state_walk.walk({"host": host}, (), keep_times))


@dataclass
class _Plan:
    """A batch being planned: its exits (cycles from t0 to each, guest cycles before each)
    and the horizon it must stay inside."""

    kinds: dict[Exit, ExitKind | None]
    guest_room: int
    mux_room: int
    ovf_room: Rooms
    peak: int  # the largest per-kind count of the current work
    total: int  # the current work's cycles
    t: int  # cycles from t0 to the end of the last exit planned
    host_events: int  # a bound of the events the exits planned give any counter
    exits: list[Exit]
    pos: list[int] = field(default_factory=lambda: [0])
    guest_before: list[int] = field(default_factory=lambda: [0])

    @property
    def ratio(self) -> float:
        """Events per guest cycle, at most, of any kind in the current work."""
        return self.peak / max(1, self.total)


class Rooms(NamedTuple):
    """Events counters can take before one wraps: counting guest work, host work, both."""

    guest: int
    host: int
    both: int

    def fits(self, guest_events: Any, host_events: Any) -> Any:
        """Guest and host event bounds (ints or arrays) wrap nothing (elementwise)."""
        return (guest_events < self.guest) & (host_events < self.host) & (guest_events + host_events < self.both)


@dataclass
class Probe:
    before: dict[Path, Any]
    after: dict[Path, Any]
    dur: int
    log: list[tuple[int, int, bool, bool]]  # (event id, cycles into the exit, enabled, running)


@dataclass
class ExitKind:
    """What one exit of a kind does at a signature (learned from two probes)."""

    dur: int  # host cycles the exit takes
    deltas: list[tuple[Path, int]]  # accumulators and what one exit adds
    needs_real: bool  # it writes last-value registers: it runs for real, at its exact point
    log: list[tuple[int, int, bool, bool]]  # perf transitions in the exit
    host_events: int  # an upper bound of events any counter takes in the exit
    changed: frozenset[Path] = frozenset()  # every value it moved (accumulators or not)


@dataclass
class _SigState:
    kinds: dict[Exit, ExitKind | None] = field(default_factory=dict)
    probes: dict[Exit, list[Probe]] = field(default_factory=dict)


class FastForward:
    """The fast-forward of one vCPU's background exits."""

    def __init__(self, vcpu: VCpu) -> None:
        self.vcpu = vcpu
        self.sigs: dict[Any, _SigState] = {}
        self.batches = 0
        self.batched_exits = 0
        self.probes = 0
        self._table: list[Exit] | None = None
        self._mass: list[float] | None = None  # the probability of each exit in _table
        self._arrays: tuple[Any, ...] | None = None  # `_plan_bulk`'s per-code kind arrays
        self._misses = 0  # exit points in a row that could not start a batch
        self._cooldown = 0  # exit points left to run one by one without looking
        self._added = self._realed = 0  # recent exits added in bulk / run for real in batches
        self._unworthy = 0  # batches in a row that were not worth it

    # ---- state ---------------------------------------------------------------------------
    def _roots(self) -> dict[str, Any]:
        """What an exit of this vCPU can touch: the vCPU, its CPU, the perf events and
        context of both, the books of this vCPU and of the host, the mode."""
        v = self.vcpu
        h = v.host
        cpu = v.cpu
        led = h.costs_ledger
        roots: dict[str, Any] = {
            "vcpu": v,
            "cpu": cpu,
            "events": self._events(),
            "ledger": {e: (led.cycles.get(e, {}), led.calls.get(e, {})) for e in (v.name, "host")},
            "truth": h.truth.slots(v.task.owner),
            "cpu_truth": h.cpu_truth[cpu.index],
            "silent": h.silent,
            "leaks": h.leaks,
            "mode": h.mode,
        }
        if h.perf is not None:
            roots["perf_stats"] = h.perf.stats
            roots["perf_ctx"] = h.perf.ctx[cpu.index]
        return roots

    def _stop(self) -> list[Any]:
        """Where the view stops: the rest of the machine (other CPUs, tasks and vCPUs and
        their mode state), the perf driver's constant tables, the composition."""
        v = self.vcpu
        h = v.host
        out: list[Any] = [h, v.vm, v.hooks, h.model, h.perf]
        if h.perf is not None:
            out.append(h.perf.driver)
        out += [c for c in h.cpus if c is not v.cpu]
        out += [t for c in h.cpus for t in c.tasks if t is not v.task]
        for vm in h.vms:
            for o in vm.vcpus:
                if o is not v:
                    out += [o, o.mode_state]
        return out

    def view(self) -> dict[Path, Any]:
        return state_walk.walk(self._roots(), self._stop(), SKIP_ATTRS)

    def _events(self) -> list[PerfEvent]:
        """The host perf events an exit of this vCPU can touch: the CPU context's groups
        and the vCPU task's, with their siblings."""
        v = self.vcpu
        perf = v.host.perf
        if perf is None:
            return []
        return [e for leader in (*perf.ctx[v.cpu.index].groups, *v.task.perf_events) for e in leader.group]

    def signature(self) -> Any:
        """The structural state an exit depends on, or None when exits must run one by one."""
        v = self.vcpu
        cpu = v.cpu
        if v.host.tracer is not None or v._pmi_requested or v._guest_pmi_due or v._in_guest_handler:
            return None
        if v.pending_host_cycles or cpu.current_task is not v.task or not v.in_guest:
            return None
        for f in (*cpu.facilities.values(), *v.facilities.values()):
            if f.active:
                return None
        mode = v.hooks.fast_forward_state(vcpu=v)
        if mode is None:
            return None

        def pmu_sig(p: Any) -> tuple[Any, ...]:
            # the decoded controls of every counter (the counting plans follow from them),
            # the mode switches and the overflow status: never a counter value
            pmcs = tuple(
                (c.config, c.usr, c.os, c.int_en, c.local_en, c.global_en, c.count_host, c.count_guest, c.exotic)
                for c in p.pmcs
            )
            return (p.guest_mode, p.virtualization_enabled, tuple(sorted(p.entry_loads.items())), p.global_status, pmcs)

        events = tuple((e.id, e.state, e.idx, e._t_enabled, e._t_running) for e in self._events())
        return (
            mode,
            v.in_vcpu_run,
            v.in_run_loop,
            v.lapic.value,
            frozenset(v.facility_blocked),
            v.direct_count,
            pmu_sig(cpu.pmu),
            pmu_sig(v.pmu),
            events,
        )

    # ---- exits -----------------------------------------------------------------------------
    def _real(self, ex: Exit, log: list[tuple[int, int, bool, bool]] | None = None) -> int:
        """One real exit; returns the host cycles it took. With `log`, records the perf
        transitions inside it."""
        v = self.vcpu
        cpu = v.cpu
        t0 = cpu.now
        perf = v.host.perf
        if log is not None and perf is not None:
            perf.ticking_log = lambda e, en, run: log.append((e.id, cpu.now - t0, en, run))
        try:
            v._exit(*ex)
        finally:
            if perf is not None:
                perf.ticking_log = None
        return cpu.now - t0

    def exit_due(self, queue: Any, room: int, tick_owed: int) -> int:
        """The background exit that is due now: probe it, run it, or fast-forward from it.
        `room`: guest cycles left in the slice; `tick_owed`: guest cycles the run loop has yet
        to take off the guest tick (the piece that led here). Returns the guest cycles a
        batch ran (0 when only this exit ran)."""
        v = self.vcpu
        ex = v.exit_process.draw()
        if v.stats.total_exits < WARMUP_EXITS:
            v._exit(*ex)  # too few exits yet for learning to pay
            return 0
        if self._cooldown:
            self._cooldown -= 1
            v._exit(*ex)
            return 0
        sig = self.signature()
        st = None if sig is None else self.sigs.get(sig)
        if sig is not None and st is None:
            if len(self.sigs) >= MAX_SIGNATURES:
                del self.sigs[next(iter(self.sigs))]  # the oldest: its probes hold two views
            st = self.sigs[sig] = _SigState()
        if st is not None and ex not in st.kinds:
            learned = [k for k in st.kinds.values() if k is not None]
            if len(st.kinds) >= 2 and all(k.needs_real for k in learned):
                # every exit learned here runs for real (a mediated placement that switches
                # at each exit): no batch could add anything in bulk; stop learning here
                st.kinds[ex] = None
                self._miss()
                v._exit(*ex)
                return 0
            if self.probes > FREE_PROBES + self.batched_exits // PROBE_PAYBACK:
                # learning here has not repaid itself (a signature that keeps changing): a
                # miss, backed off exponentially
                self._miss()
                v._exit(*ex)
                return 0
            now = time.perf_counter()
            budget = _probe_budget(v.host, now)
            if (
                budget[1] > PROBE_GRACE_S + PROBE_TIME_SHARE * (now - budget[0])
                or self.probes * PROBE_SHARE > v.stats.total_exits - WARMUP_EXITS
            ):
                # probes are costly (two views of the state): ration them. Not a miss (the
                # signature is fine, learning waits its turn): look again soon, without the
                # exponential back-off, which would skip thousands of exits early in a run
                self._cooldown = RATIONED_WAIT
                v._exit(*ex)
            else:
                self.probes += 1
                self._probe(sig, st, ex)
                budget[1] += time.perf_counter() - now
            return 0
        kind = None if st is None else st.kinds[ex]
        if kind is None or kind.needs_real or not queue:
            # nothing to gain here: back off (exponentially, while it lasts) from paying the
            # signature at every exit; one by one is exact all the same
            self._miss()
            v._exit(*ex)
            return 0
        assert st is not None
        return self._batch(ex, st, queue[0], room, tick_owed)

    def _unknown_mass(self, kinds: dict[Exit, ExitKind | None]) -> tuple[float, float]:
        """The probability that a drawn exit is of a kind not learned at this signature (a
        batch would stop at the first one: planning one would be wasted): (of kinds not
        probed yet, of kinds that cannot be learned)."""
        ep = self.vcpu.exit_process
        table = self._table
        if table is None:
            table = self._table = ep.exit_table()
        if self._mass is None:
            ft, st = ep.fast_table, ep.slow_table
            fw = [c - p for c, p in zip(ft.cum, [0.0, *ft.cum[:-1]], strict=True)]
            sw = [c - p for c, p in zip(st.cum, [0.0, *st.cum[:-1]], strict=True)]
            slow = max(0.0, 1.0 - ep.fast - ep.user)
            self._mass = (
                [ep.fast * w / ft.cum[-1] for w in fw]
                + [slow * w / st.cum[-1] for w in sw]
                + [ep.user * w / st.cum[-1] for w in sw]
            )
        unprobed = refused = 0.0
        for ex, m in zip(table, self._mass, strict=True):
            if ex not in kinds:
                unprobed += m
            elif kinds[ex] is None:
                refused += m
        return unprobed, refused

    def _miss(self) -> None:
        """An exit point that could not start a batch: after COOLDOWN_AFTER in a row, skip
        looking (the signature costs about an exit) for 1, 2, 4, ... exit points."""
        self._misses += 1
        if self._misses >= COOLDOWN_AFTER:
            self._cooldown = min(COOLDOWN_MAX, 1 << min(16, self._misses - COOLDOWN_AFTER))

    def _probe(self, sig: Any, st: _SigState, ex: Exit) -> None:
        try:
            before = self.view()
        except state_walk.TooLarge:
            st.kinds[ex] = None
            self.vcpu._exit(*ex)
            return
        log: list[tuple[int, int, bool, bool]] = []
        dur = self._real(ex, log)
        after = self.view()
        if self.signature() != sig:
            st.kinds[ex] = None
            return
        probes = st.probes.setdefault(ex, [])
        probe = Probe(before, after, dur, log)
        probes.append(probe)
        if len(probes) == 1:
            # an exit of another reason on the same path is learned: one probe that shows
            # exactly its changes (but for the exit-reason count) is enough
            for other, k in st.kinds.items():
                if k is not None and other[1:] == ex[1:]:
                    learned = _learn_from_sibling(probe, k, other[0], ex[0], self.vcpu)
                    if learned is not None:
                        st.kinds[ex] = learned
                        del st.probes[ex]
                        return
        if len(probes) == 2:
            st.kinds[ex] = _learn(probes[0], probes[1], self.vcpu)
            del st.probes[ex]

    # ---- the batch -------------------------------------------------------------------------
    def _overflow_room(self) -> Rooms:
        """Fewer events than these wrap no counter, whatever their spread: for the counters
        that count only guest work, only host work, and both (the physical and the guest
        PMU's counters, and every sampling event's period left)."""
        v = self.vcpu
        g = h = gh = 1 << 62
        for p in (v.cpu.pmu, v.pmu):
            guest = {id(e[0]): e[0] for e in p.plan(True)}
            host = {id(e[0]): e[0] for e in p.plan(False)}
            for i, pmc in (guest | host).items():
                r = pmc.mask - pmc.value
                if i in guest and i in host:
                    gh = min(gh, r)
                elif i in guest:
                    g = min(g, r)
                else:
                    h = min(h, r)
        for e in self._events():
            if e.period:
                a = e.attr
                if not a.exclude_guest and not a.exclude_host:
                    gh = min(gh, e.period_left)
                elif not a.exclude_guest:
                    g = min(g, e.period_left)
                elif not a.exclude_host:
                    h = min(h, e.period_left)
        return Rooms(min(g, gh), min(h, gh), gh)

    def _batch(self, first: Exit, st: _SigState, cur: WorkCursor, room: int, tick_owed: int) -> int:
        v = self.vcpu
        cpu = v.cpu
        ep = v.exit_process
        kinds = st.kinds
        k0 = kinds[first]
        assert k0 is not None
        t0 = cpu.now
        mux_room = cpu.next_mux - t0
        guest_room = min(room, cur.total - cur.done)
        if v.guest_tick is not None:
            guest_room = min(guest_room, v._guest_tick_left - tick_owed)
        ovf_room = self._overflow_room()
        peak = max(cur._counts) if cur.total else 0
        plan = _Plan(kinds, guest_room, mux_room, ovf_room, peak, cur.total, k0.dur, k0.host_events, [first])
        if plan.t >= mux_room or not ovf_room.fits(1, plan.host_events + 1):
            v._exit(*first)
            return 0
        ratio = plan.ratio
        horizon = min(guest_room, mux_room, ovf_room.guest / ratio if ratio > 0 else mux_room)
        if horizon < MIN_BATCH * ep.mean_gap:
            # too few exits fit before the horizon for a batch to pay for its planning (a
            # host tick or a sample is near): one by one, and no random draw taken ahead.
            # The obstacle is known: skip looking for about the exits before it, then look
            # again at once (not the exponential back-off of an unstable signature, which
            # would run hundreds of exits one by one past each sample)
            self._cooldown = int(horizon / ep.mean_gap)
            v._exit(*first)
            return 0
        unprobed, refused = self._unknown_mass(kinds)
        if unprobed + refused > MAX_UNKNOWN:
            if refused > MAX_UNKNOWN:
                self._miss()  # no batch can ever start at this signature: back off
            else:
                self._cooldown = RATIONED_WAIT  # kinds still to learn: look again soon
            v._exit(*first)
            return 0
        if ep._pending:
            self._plan_scalar(plan)
        else:
            self._plan_bulk(plan)
        exits, pos, guest_before = plan.exits, plan.pos, plan.guest_before
        if len(exits) == 1:
            v._exit(*first)
            return 0
        self._misses = 0
        n_real = 0
        for ex, c in Counter(exits).items():
            k = kinds[ex]
            if k is not None and k.needs_real:
                n_real += c
        ran = self._run_batch(exits, pos, guest_before, kinds, cur, t0)
        self.batches += 1
        self.batched_exits += len(exits)
        # a batch pays only if most of its exits are added in bulk: where real exits (a
        # mediated put/load) are as many as the others, one by one is as fast; back off
        self._added = self._added * 7 // 8 + (len(exits) - n_real) * 8
        self._realed = self._realed * 7 // 8 + n_real * 8
        if self._realed * WORTH_IT > self._added:
            self._unworthy += 1
            self._cooldown = min(COOLDOWN_MAX * 4, 1 << min(16, self._unworthy))
        else:
            self._unworthy = 0
        return ran

    def _plan_scalar(self, plan: _Plan) -> None:
        """Plan the batch one draw at a time (exits were given back: they come first)."""
        ep = self.vcpu.exit_process
        g_total = 0
        while True:
            g = ep.next_gap
            if g_total + g >= plan.guest_room or plan.t + g >= plan.mux_room:
                break
            guest_bound = (g_total + g) * plan.peak // max(1, plan.total) + 1
            if not plan.ovf_room.fits(guest_bound, plan.host_events):
                break
            ex = ep.draw()
            k = plan.kinds.get(ex)
            if (
                k is None
                or plan.t + g + k.dur >= plan.mux_room
                or not plan.ovf_room.fits(guest_bound, plan.host_events + k.host_events)
            ):
                ep.push_back([(ex, ep.next_gap)], g)
                break
            g_total += g
            plan.pos.append(plan.t + g)
            plan.guest_before.append(g_total)
            plan.t += g + k.dur
            plan.host_events += k.host_events
            plan.exits.append(ex)

    def _plan_bulk(self, plan: _Plan) -> None:
        """Plan the batch from exits drawn ahead in bulk (ExitProcess.peek: the same values
        as one draw at a time); the same horizon as `_plan_scalar`, as array operations."""
        import numpy as np

        ep = self.vcpu.exit_process
        kinds, guest_room, mux_room, ovf_room, ratio = (
            plan.kinds,
            plan.guest_room,
            plan.mux_room,
            plan.ovf_room,
            plan.ratio,
        )
        t, host_events = plan.t, plan.host_events
        table = self._table
        if table is None:
            table = self._table = ep.exit_table()
        arrays = self._arrays
        if arrays is None or arrays[0] is not kinds or arrays[1] != len(kinds):
            # per exit code: learned, its cycles, its host-event bound (a signature's kinds
            # are only ever added to, so its dict and size tell whether these are current)
            per = [kinds.get(ex) for ex in table]
            arrays = self._arrays = (
                kinds,
                len(kinds),
                np.array([k is not None for k in per]),
                np.array([0 if k is None else k.dur for k in per], dtype=np.int64),
                np.array([0 if k is None else k.host_events for k in per], dtype=np.int64),
            )
        known, dur, hev = arrays[2], arrays[3], arrays[4]
        # guest cycles the horizon can hold: the slice, the tick, the next counter wrap
        horizon = min(guest_room, mux_room, ovf_room.guest / ratio if ratio > 0 else mux_room)
        m = int(min(MAX_BATCH, horizon / max(1.0, ep.mean_gap) * 1.1 + 8))
        codes, gaps = ep.peek(m)
        gap_before = np.array([ep.next_gap, *gaps[:-1]], dtype=np.int64)
        g = np.cumsum(gap_before)  # guest cycles up to each candidate exit
        d = dur[codes]
        d_prev = np.cumsum(d) - d
        start = t + d_prev + g  # cycles from t0 to each candidate
        h = host_events + np.cumsum(hev[codes])
        h_prev = h - hev[codes]
        bound = g * ratio + 2  # >= the events any counter takes from the guest work (float-safe)
        gap_ok = (g < guest_room) & (start < mux_room) & ovf_room.fits(bound, h_prev)
        kind_ok = known[codes] & (start + d < mux_room) & ovf_room.fits(bound, h)
        bad = np.flatnonzero(~(gap_ok & kind_ok))
        n = int(bad[0]) if bad.size else m
        if n == m:
            ep.skip(m, gaps[m - 1])
        elif not gap_ok[n]:
            ep.skip(n, int(gap_before[n]))
        else:
            ep.skip(n + 1, gaps[n])
            ep.push_back([(table[int(codes[n])], gaps[n])], int(gap_before[n]))
        if n:
            plan.exits.extend(map(table.__getitem__, codes[:n].tolist()))
            plan.pos.extend(start[:n].tolist())
            plan.guest_before.extend(g[:n].tolist())

    def _run_batch(
        self,
        exits: list[Exit],
        pos: list[int],
        guest_before: list[int],
        kinds: dict[Exit, ExitKind | None],
        cur: WorkCursor,
        t0: int,
    ) -> int:
        """Run a planned batch; returns the guest cycles it ran."""
        v = self.vcpu
        cpu = v.cpu
        n = len(exits)
        present = set(exits)
        # every exit of a kind that writes last-value registers runs for real, at its exact
        # point: what such an exit adds can depend on when the one before it ran (the mediated
        # blind window is measured from the last load), which two probes cannot rule out
        needs = {ex for ex in present if kinds[ex].needs_real}  # type: ignore[union-attr]
        real = [i for i, ex in enumerate(exits) if ex in needs] if needs else []
        events = {e.id: e for e in self._events()}
        logged = {eid for ex in present for (eid, *_r) in kinds[ex].log}  # type: ignore[union-attr]
        times0 = {eid: _times(events[eid]) for eid in logged if eid in events}
        adder = state_walk.Adder(self._roots())
        guest_done = 0
        accounted = 0
        cpl = cur.work.cpl
        for r in [*real, n]:
            target = guest_before[r] if r < n else guest_before[-1]
            if target > guest_done:
                counts = cur.take(target - guest_done)
                v._guest_piece(cpu, counts, cpl)
                if v.guest_tick is not None:
                    v._guest_tick_left -= counts[0]
                guest_done = target
            # what the exits up to this real one add (none of them real), summed per path
            # first: integer sums, so one addition per value is the same as one per exit
            tally: Counter[Exit] = Counter(exits[accounted:r])
            total: dict[Path, int] = {}
            for ex, times in tally.items():
                for path, d in kinds[ex].deltas:  # type: ignore[union-attr]
                    total[path] = total.get(path, 0) + d * times
            for path, d in total.items():
                adder.add(path, d)
            accounted = r + 1
            if r < n:
                if cpu.now != t0 + pos[r]:
                    raise AssertionError(f"fast-forward: exit {r} at {cpu.now}, expected {t0 + pos[r]}")
                dur = self._real(exits[r])
                if dur != kinds[exits[r]].dur and r + 1 < n:  # type: ignore[union-attr]
                    # this exit took longer or shorter than learned (its work depends on a
                    # value, e.g. how many counters are non-zero at the put): the positions
                    # planned after it are off; give the rest back to run one by one
                    gaps = [guest_before[i + 1] - guest_before[i] for i in range(r + 1, n - 1)]
                    ep = v.exit_process
                    rest = list(zip(exits[r + 1 :], [*gaps, ep.next_gap], strict=True))
                    ep.push_back(rest, guest_before[r + 1] - guest_before[r])
                    exits = exits[: r + 1]
                    guest_done = guest_before[r]
                    break
        cpu.pmu.invalidate_headroom()
        v.pmu.invalidate_headroom()
        if times0:
            self._retime(times0, events, exits, pos, kinds, t0)
        return guest_done

    def _retime(
        self,
        times0: dict[int, tuple[int, int, int, bool, bool]],
        events: dict[int, PerfEvent],
        exits: list[Exit],
        pos: list[int],
        kinds: dict[Exit, ExitKind | None],
        t0: int,
    ) -> None:
        """Enabled/running times of the events that tick on and off inside exits, from each
        transition's exact position (perf's times are nanosecond floors: a window's length
        depends on where it lies)."""
        freq = self.vcpu.host.freq_hz
        state = {eid: list(t) for eid, t in times0.items()}
        for i, ex in enumerate(exits):
            base = t0 + pos[i]
            for eid, off, en, run in kinds[ex].log:  # type: ignore[union-attr]
                s = state.get(eid)
                if s is None:
                    continue
                now_ns = (base + off) * 1_000_000_000 // freq
                dt = now_ns - s[2]
                if dt > 0:
                    if s[3]:
                        s[0] += dt
                    if s[4]:
                        s[1] += dt
                s[2] = now_ns
                s[3], s[4] = en, run
        for eid, (en_ns, run_ns, ts, t_en, t_run) in state.items():
            e = events[eid]
            if (e._t_enabled, e._t_running) != (t_en, t_run):
                raise AssertionError(f"fast-forward: {e!r} ended the batch in another state")
            e.enabled_ns, e.running_ns, e._tstamp = en_ns, run_ns, ts


#: per host: [wall clock when its first vCPU started learning, wall seconds spent probing]
_BUDGETS: weakref.WeakKeyDictionary[Any, list[float]] = weakref.WeakKeyDictionary()


def _probe_budget(host: Any, now: float) -> list[float]:
    """The host's probing budget (shared by its vCPUs: four vCPUs learning at once must
    not take four shares of the wall time)."""
    b = _BUDGETS.get(host)
    if b is None:
        b = _BUDGETS[host] = [now, 0.0]
    return b


def _times(e: PerfEvent) -> tuple[int, int, int, bool, bool]:
    return (e.enabled_ns, e.running_ns, e._tstamp, e._t_enabled, e._t_running)


def _learn(a: Probe, b: Probe, vcpu: VCpu) -> ExitKind | None:
    """What one exit does, from two probes at one signature; None if it is not an exit the
    fast-forward can repeat exactly."""
    if a.dur != b.dur or a.log != b.log:
        return None
    if set(b.before) != set(b.after) or not set(a.before) <= set(a.after):
        return None  # the exit grows or drops state
    for p in a.after.keys() - a.before.keys():
        if type(a.after[p]) is not int:
            return None  # only a new integer key (a first charge of an operation) may appear
    deltas: list[tuple[Path, int]] = []
    needs_real = False
    for p, vb1 in b.after.items():
        vb0 = b.before[p]
        va0 = a.before.get(p, 0)
        va1 = a.after.get(p, va0)
        if va0 == va1 and vb0 == vb1:
            continue
        if type(va1) is not int or type(vb1) is not int or type(va0) is not int or type(vb0) is not int:
            return None  # a flag, a name or a float changed: not an accumulator
        da, db = va1 - va0, vb1 - vb0
        if da == db:
            deltas.append((p, da))
        else:
            needs_real = True
    ipc = max(100, vcpu.costs.exit_host_ipc_x100)
    changed = frozenset(p for p, v in b.after.items() if b.before[p] != v) | frozenset(
        p for p, v in a.after.items() if a.before.get(p) != v
    )
    return ExitKind(a.dur, deltas, needs_real, a.log, a.dur * ipc // 100 + 1, changed)


_EXITS_BY_REASON = ("vcpu", (0, "stats"), (0, "exits"))


def _rename_reason(p: Path, old: str, new: str) -> Path:
    return (*_EXITS_BY_REASON, (1, new)) if p[:3] == _EXITS_BY_REASON and p[3:] == ((1, old),) else p


def _learn_from_sibling(p: Probe, sib: ExitKind, sib_reason: str, reason: str, vcpu: VCpu) -> ExitKind | None:
    """What an exit does, from one probe and a learned exit of another reason on the same
    path (fastpath, slow, to userspace): accepted only if the probe moved exactly what the
    sibling moves, by exactly as much where the sibling is an accumulator, the exit-reason
    count renamed. Otherwise a second probe decides (`_learn`)."""
    if p.dur != sib.dur or p.log != sib.log or not set(p.before) <= set(p.after):
        return None
    moved = {}
    for path, v1 in p.after.items():
        v0 = p.before.get(path, 0)
        if v0 != v1:
            if type(v0) is not int or type(v1) is not int:
                return None
            moved[path] = v1 - v0
    expected = {_rename_reason(q, sib_reason, reason) for q in sib.changed}
    if not set(moved) <= expected:
        return None
    deltas = [(_rename_reason(q, sib_reason, reason), d) for q, d in sib.deltas]
    if not sib.needs_real and dict(deltas) != moved:
        return None
    return ExitKind(sib.dur, deltas, sib.needs_real, sib.log, sib.host_events, frozenset(expected))
