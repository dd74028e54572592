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
   saved at the put: exits of that kind then run for real, each at its exact point), unless
   a positional rule reproduces it after both probes (the mode's `vpmu_fast_forward_rules`,
   and the core's own for perf's reschedule time, sampling start values and the guest's
   saved counters: a batch then sets the field to what its last writer left). Each perf
   event's enabled/running transitions and reschedules inside the exit, with their cycle
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
from vpmu_core.hv.ff_rules import ExitClock, ExitConstant, ExitGuestCycles, FastForwardRules
from vpmu_core.hv.state_walk import Path
from vpmu_core.hw.pmc import FIXED_BASE

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
#: ... or this many, at a signature whose exits switch a context (positional fields: a
#: real exit costs several times a batch's planning)
MIN_SWITCH_BATCH = 4
#: ... and if at most this share of the exits drawn are of kinds not learned yet
MAX_UNKNOWN = 0.02
#: signatures a vCPU remembers (what it learned at each, its pending probes' views)
MAX_SIGNATURES = 64
#: exits drawn ahead at most for one batch
MAX_BATCH = 8192
#: a batch with at least this many perf transitions per event that ticks recomputes perf
#: times as array operations (about where a numpy pass per event costs what the loop does)
RETIME_BULK = 150
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
    start: int = 0  # cpu.now when the exit started
    #: the mode's fields before the exit relative to the end of the exit before it (None:
    #: another exit came between), and after it relative to its own end (Declared.relative)
    pre: tuple[int, ...] | None = None
    post: tuple[int, ...] | None = None
    #: every perf reschedule inside the exit: (CPU, cycles into the exit, the switched
    #: hardware counters' values right after it, on the vCPU's CPU)
    resched: list[tuple[int, int, tuple[int, ...]]] = field(default_factory=list)
    counters: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # switched counters before, after


#: how a positional field is recomputed: the clock at a point of the exit; perf's nanosecond
#: time at the exit's last reschedule; another value as the exit leaves it; a constant; a
#: sampling event's start value, -(its period left) (x86_perf_event_set_period())
CLOCK, NS, COPY, CONST, NEG = range(5)


class Rule(NamedTuple):
    """A learned positional field: after an exit starting at cycle p it holds p + c (CLOCK),
    (p + c) in nanoseconds (NS), the value at `src` + c (COPY), c (CONST) or (c - the value
    at `src`) & mask (NEG; `src` may be an accumulator)."""

    path: Path
    op: int
    c: int
    src: Path | None = None
    mask: int = 0


class CounterTest(NamedTuple):
    """A comparison the exit's work makes on switched hardware counter `idx` (the mode's
    word, FastForwardRules.switched_counters), as both probes found it: the counter non-zero
    at the VM-exit, and equal to what the exit's last perf reschedule left in it (`h`, or a
    sampling event's counter -period_left when `follows` names that event's period_left)."""

    slot: int  # its index in the signature's switched counters
    nonzero: bool
    equal: bool
    h: int
    follows: Path | None
    mask: int


@dataclass
class Declared:
    """A signature's positional field candidates (resolved once per signature): path -> (how
    it is recomputed, source of a COPY), and the switched counters (idx, guest's value path,
    width mask)."""

    ops: dict[Path, tuple[int, Path | None]]
    counters: tuple[tuple[int, Path, int], ...]
    reads: tuple[tuple[Path, int], ...] = ()  # the mode's fields (its exits read them)

    def relative(self, view: dict[Path, Any], end: int, guest_cycles: int) -> tuple[int, ...] | None:
        """The mode's fields in `view` relative to the end of the exit that wrote them (its
        clock and the guest cycles then): what the next exit's work reads."""
        out = []
        for path, op in self.reads:
            v = view.get(path)
            if type(v) is not int:
                return None
            out.append(v - end if op == CLOCK else v - guest_cycles if op == COPY else v)
        return tuple(out)


@dataclass
class ExitKind:
    """What one exit of a kind does at a signature (learned from two probes)."""

    dur: int  # host cycles the exit takes
    deltas: list[tuple[Path, int]]  # accumulators and what one exit adds
    needs_real: bool  # it writes last-value registers: it runs for real, at its exact point
    log: list[tuple[int, int, bool, bool]]  # perf transitions in the exit
    host_events: int  # an upper bound of events any counter takes in the exit
    changed: frozenset[Path] = frozenset()  # every value it moved (accumulators or not)
    rules: tuple[Rule, ...] = ()  # positional fields it sets (not needs_real: a batch sets them)
    tests: tuple[CounterTest, ...] = ()  # the counter comparisons its work made in the probes
    resched: tuple[tuple[int, int], ...] = ()  # its perf reschedules: (CPU, cycles into it)
    ends: tuple[int, ...] | None = ()  # the mode's fields relative to its end (Declared.relative)


@dataclass
class _SigState:
    kinds: dict[Exit, ExitKind | None] = field(default_factory=dict)
    probes: dict[Exit, list[Probe]] = field(default_factory=dict)
    declared: Declared | None = None
    #: `bulk_rules()` for len(kinds) kinds
    _bulk: tuple[int, tuple[CounterTest, ...], tuple[Path, ...], tuple[int, ...] | None] | None = None

    def bulk_rules(self) -> tuple[tuple[CounterTest, ...], tuple[Path, ...], tuple[int, ...] | None]:
        """The counter tests and positional paths of the kinds a batch adds in bulk with
        rules, and the mode's fields as every exit here leaves them, relative to its end
        (`ExitKind.ends`). Rules are used only where that is sound; else the kinds that
        have them run for real, as without rules (needs_real only ever goes from False to
        True: always exact):
        - every kind here leaves the mode's fields alike relative to its end (an exit reads
          what the exit before it left: a kind that leaves them alone, a fastpath exit under
          `switch_at=run_loop`, would change what the next put measures);
        - no kind adds to a positional field or to the source of a copy (a batch sets the
          fields after adding, and reads a copy's source where the guest work reached the
          exit that wrote it).
        Kinds are only ever added: their number tells whether this is current."""
        b = self._bulk
        if b is None or b[0] != len(self.kinds):
            learned = [k for k in self.kinds.values() if k is not None]
            ruled = [k for k in learned if k.rules and not k.needs_real]
            tests: set[CounterTest] = set()
            paths: set[Path] = set()
            sources: set[Path] = set()
            for k in ruled:
                tests.update(k.tests)
                paths.update(r.path for r in k.rules)
                sources.update(r.src for r in k.rules if r.op == COPY and r.src is not None)
            ends = ruled[0].ends if ruled else None
            sound = (
                ends is not None
                and all(k.ends == ends for k in learned)
                and not any((sources & k.changed) or any(p in paths for p, _ in k.deltas) for k in learned)
            )
            if ruled and not sound:
                for k in ruled:
                    k.needs_real, k.rules, k.tests = True, (), ()
                tests, paths, ends = set(), set(), None
            b = self._bulk = (len(self.kinds), tuple(sorted(tests, key=repr)), tuple(sorted(paths, key=repr)), ends)
        return b[1], b[2], b[3]


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
        self._misses = 0  # misses since the last batch (`_miss`)
        self._cooldown = 0  # exit points left to run one by one without looking
        self._added = self._realed = 0  # recent exits added in bulk / run for real in batches
        self._unworthy = 0  # batches in a row that were not worth it
        self._end: tuple[int, int, int] | None = None  # (exits, guest cycles, clock) at the last exit's end
        self._rules: FastForwardRules | None = None  # `_mode_rules()`
        self._rules_asked = False
        self._switched: tuple[int, ...] = ()  # the counters it switches that the hardware has

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
        rules = self._mode_rules()
        # which switched counters are zero: a put and a load do less for them (a value is
        # not in the signature, but whether the switch writes it is)
        zeros = ()
        if rules is not None:
            pmc = cpu.pmu.pmc
            zeros = tuple(pmc(i).value == 0 for i in self._switched)
        return (
            mode,
            zeros,
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
    def _real(
        self,
        ex: Exit,
        log: list[tuple[int, int, bool, bool]] | None = None,
        resched: list[tuple[int, int, tuple[int, ...]]] | None = None,
        counters: tuple[int, ...] = (),
    ) -> int:
        """One real exit; returns the host cycles it took. With `log`, records the perf
        transitions inside it; with `resched`, every perf reschedule (`PerfSubsystem.
        on_resched`, called right after ctx_resched() applied its set, when `ctx.settled`
        took the time) and the hardware counters `counters` as it left them."""
        v = self.vcpu
        cpu = v.cpu
        t0 = cpu.now
        perf = v.host.perf
        observer = None
        if log is not None and perf is not None:
            perf.ticking_log = lambda e, en, run: log.append((e.id, cpu.now - t0, en, run))
            if resched is not None:
                pmcs = [cpu.pmu.pmc(i) for i in counters]

                def observer(c: int) -> None:
                    resched.append((c, cpu.now - t0, tuple(p.value for p in pmcs)))

                perf.on_resched.append(observer)
        try:
            v._exit(*ex)
        finally:
            if perf is not None:
                perf.ticking_log = None
                if observer is not None:
                    perf.on_resched.remove(observer)
        return cpu.now - t0

    def _mode_rules(self) -> FastForwardRules | None:
        """The mode's `vpmu_fast_forward_rules` answer, asked once per vCPU (at its first
        exit point with a fast-forward state), and the counters it switches (`_switched`)."""
        ans = self._rules
        if not self._rules_asked:
            self._rules_asked = True
            v = self.vcpu
            ans = v.hooks.fast_forward_rules(vcpu=v)
            if ans is not None and not isinstance(ans, FastForwardRules):
                raise TypeError(f"vpmu_fast_forward_rules must return a FastForwardRules, not {ans!r}")
            self._rules = ans
            hw = v.cpu.pmu
            self._switched = () if ans is None else tuple(i for i in ans.switched_counters if hw.pmc(i) is not None)
        return ans

    def _declared(self) -> Declared | None:
        """The positional field candidates at a new signature (once per signature): the
        mode's fields (`vpmu_fast_forward_rules`), perf's last reschedule time, and the
        guest copies of the counters the mode switches. None: the mode declares nothing,
        and every exit that moves a value by different amounts runs for real."""
        v = self.vcpu
        ans = self._mode_rules()
        if ans is None:
            return None
        ops: dict[Path, tuple[int, Path | None]] = {}
        if v.host.perf is not None:
            ops[_SETTLED_NS] = (NS, None)
            ops[_GUEST_RESUME_NS] = (NS, None)
        for k, e in enumerate(self._events()):
            if e.period:
                # the start value perf wrote at the last sched-in (perf: -left)
                ev = ("events", (1, k))
                ops[(*ev, (0, "_start_raw"))] = (NEG, (*ev, (0, "period_left")))
        for name, rule in ans.fields.items():
            path = ("vcpu", (0, "mode_state"), (0, name))
            if isinstance(rule, ExitClock):
                ops[path] = (CLOCK, None)
            elif isinstance(rule, ExitGuestCycles):
                ops[path] = (COPY, _GUEST_CYCLES)
            elif isinstance(rule, ExitConstant):
                ops[path] = (CONST, None)
            else:
                raise TypeError(f"vpmu_fast_forward_rules: {name}: not a field rule: {rule!r}")
        counters = []
        for idx in ans.switched_counters:
            hw, g = v.cpu.pmu.pmc(idx), v.pmu.pmc(idx)
            attr, i = ("fixed", idx - FIXED_BASE) if idx >= FIXED_BASE else ("gp", idx)
            if hw is None or g is None or getattr(v.pmu, attr)[i] is not g or getattr(v.cpu.pmu, attr)[i] is not hw:
                continue  # not a pair the core can name: its copy stays a value no rule sets
            gpath = ("vcpu", (0, "pmu"), (0, attr), (1, i), (0, "value"))
            ops[gpath] = (COPY, ("cpu", (0, "pmu"), (0, attr), (1, i), (0, "value")))
            counters.append((idx, gpath, hw.mask))
        reads = tuple((p, op) for p, (op, _) in ops.items() if p[:2] == ("vcpu", (0, "mode_state")))
        return Declared(ops, tuple(counters), reads)

    def exit_due(self, queue: Any, room: int, tick_owed: int) -> int:
        """The background exit that is due now: probe it, run it, or fast-forward from it.
        `room`: guest cycles left in the slice; `tick_owed`: guest cycles the run loop has yet
        to take off the guest tick (the piece that led here). Returns the guest cycles a
        batch ran (0 when only this exit ran)."""
        ran = self._exit_due(queue, room, tick_owed)
        v = self.vcpu
        # where the last exit ended (the exits the run loop makes itself, a host tick or a
        # PMI, do not come here: the exit count tells whether this is still the last one)
        self._end = (v.stats.total_exits, v.stats.guest_cycles, v.cpu.now)
        return ran

    def _relative_now(self, declared: Declared, view: dict[Path, Any] | None = None) -> tuple[int, ...] | None:
        """The mode's fields now relative to the end of the last exit (None: unknown)."""
        if not declared.reads:
            return ()
        v = self.vcpu
        end = self._end
        if end is None or end[0] != v.stats.total_exits:
            return None
        if view is None:
            roots = self._roots()
            view = {}
            for path, _ in declared.reads:
                try:
                    view[path] = state_walk.value_at(roots, path)
                except (AttributeError, KeyError, IndexError, TypeError):
                    return None
        return declared.relative(view, end[2], end[1])

    def _exit_due(self, queue: Any, room: int, tick_owed: int) -> int:
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
            st = self.sigs[sig] = _SigState(declared=self._declared())
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
        """An exit point that could not start a batch for a reason that will not pass by
        itself: after COOLDOWN_AFTER of them since the last batch (only a batch resets the
        count), skip looking (the signature costs about an exit) for 1, 2, 4, ... exit
        points."""
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
        resched: list[tuple[int, int, tuple[int, ...]]] = []
        declared = st.declared
        idxs = tuple(c[0] for c in declared.counters) if declared is not None else ()
        hw = self.vcpu.cpu.pmu
        c0 = tuple(hw.pmc(i).value for i in idxs)
        v = self.vcpu
        start = v.cpu.now
        pre = self._relative_now(declared, before) if declared is not None else ()
        dur = self._real(ex, log, resched, idxs)
        after = self.view()
        c1 = tuple(hw.pmc(i).value for i in idxs)
        post = declared.relative(after, v.cpu.now, v.stats.guest_cycles) if declared is not None else ()
        if self.signature() != sig:
            st.kinds[ex] = None
            return
        if pre is None and post:
            # another exit came just before (a host tick, a PMI, the first entry): what it
            # left in the mode's fields is unknown, so what this exit added may not be what
            # others add; not a probe (the exit ran, exactly as one by one)
            return
        probes = st.probes.setdefault(ex, [])
        probe = Probe(before, after, dur, log, start, pre, post, resched, (c0, c1))
        probes.append(probe)
        if len(probes) == 1:
            # an exit of another reason on the same path is learned: one probe that shows
            # exactly its changes (but for the exit-reason count) is enough
            for other, k in st.kinds.items():
                if k is not None and other[1:] == ex[1:]:
                    learned = _learn_from_sibling(probe, k, other[0], ex[0], self.vcpu, declared)
                    if learned is not None:
                        st.kinds[ex] = learned
                        del st.probes[ex]
                        st.bulk_rules()
                        return
        if len(probes) == 2:
            st.kinds[ex] = _learn(probes[0], probes[1], self.vcpu, declared)
            del st.probes[ex]
            st.bulk_rules()

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
        tests, positional, ends = st.bulk_rules()
        if k0.needs_real:
            self._miss()  # its rules were found unsound here (bulk_rules): it runs for real
            v._exit(*first)
            return 0
        if positional:
            # exits with positional fields: the exit before this one left the mode's fields
            # as every exit here does; a batch keeps each switched counter's comparisons as
            # the probes made them, and finds every field it sets
            assert st.declared is not None
            rel = self._relative_now(st.declared)
            if rel is None:
                v._exit(*first)  # another exit came just before (a PMI): look again at the next
                return 0
            limit = self._tests_room(st, tests, cur) if rel == ends else None
            if limit is None:
                self._cooldown = RATIONED_WAIT  # a counter is where a comparison differs
                v._exit(*first)
                return 0
            guest_room = min(guest_room, limit)
        ovf_room = self._overflow_room()
        peak = max(cur._counts) if cur.total else 0
        plan = _Plan(kinds, guest_room, mux_room, ovf_room, peak, cur.total, k0.dur, k0.host_events, [first])
        if plan.t >= mux_room or not ovf_room.fits(1, plan.host_events + 1):
            v._exit(*first)
            return 0
        ratio = plan.ratio
        horizon = min(guest_room, mux_room, ovf_room.guest / ratio if ratio > 0 else mux_room)
        if horizon < (min(MIN_BATCH, MIN_SWITCH_BATCH) if positional else MIN_BATCH) * ep.mean_gap:
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

    def _tests_room(self, st: _SigState, tests: tuple[CounterTest, ...], cur: WorkCursor) -> int | None:
        """Guest cycles a batch may run before a switched counter could compare otherwise
        than in the probes (a counter leaving zero, or reaching what host perf leaves in it);
        None when one already does at this exit, or a positional field is not there to set.
        The counters move only with guest work here (the probes showed each exit restores
        them, and no batch crosses a wrap), by the cursor's exact counts."""
        v = self.vcpu
        roots = self._roots()
        for path in st.bulk_rules()[1]:
            try:
                state_walk.value_at(roots, path)
            except (AttributeError, KeyError, IndexError, TypeError):
                return None  # e.g. perf's settled schedule is unknown right now
        declared = st.declared
        assert declared is not None
        hw = v.cpu.pmu
        need: dict[int, int] = {}  # counter idx -> events it may take and compare as before
        for t in tests:
            idx = declared.counters[t.slot][0]
            val = hw.pmc(idx).value
            if (val != 0) != t.nonzero:
                return None
            m = need.get(idx, 1 << 62)
            if val == 0:
                m = 1
            if t.follows is None:
                if (val == t.h) != t.equal:
                    return None
                if val == t.h:
                    m = 1
                elif t.h > val:
                    m = min(m, t.h - val)
            else:
                # a sampling event's -period_left: between mask + 1 - left now and the mask
                # while its period does not elapse (the batch's host room)
                left = state_walk.value_at(roots, t.follows)
                lo = t.mask + 1 - left
                if left <= 0 or val >= lo:
                    return None
                m = min(m, lo - val)
            need[idx] = m
        room = 1 << 62
        total, done, counts = cur.total, cur.done, cur._counts
        if not total:
            return room
        kernel = cur.work.cpl == 0
        plan = hw.plan(True)
        for idx, m in need.items():
            pmc = hw.pmc(idx)
            kinds = [k for (q, k, os_, usr) in plan if q is pmc and (os_ if kernel else usr)]
            if not kinds:
                continue  # counts no guest work: stays as it is
            per = -(-m // len(kinds))  # m events in all need `per` of one kind at least
            for k in kinds:
                n = counts[k]
                reach = n * done // total + per  # WorkCursor.take: kind k at d is n * d // total
                if n and reach <= n:
                    room = min(room, -(-reach * total // n) - done)
        return room

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

    def _guest_to(self, cur: WorkCursor, done: int, target: int) -> int:
        """Run the batch's guest work from `done` to `target` guest cycles as one span (the
        guest tick takes it off too); returns the guest cycles done."""
        if target <= done:
            return done
        v = self.vcpu
        counts = cur.take(target - done)
        v._guest_piece(v.cpu, counts, cur.work.cpl)
        if v.guest_tick is not None:
            v._guest_tick_left -= counts[0]
        return target

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
        # the positional fields the bulk exits set (each at the position of its last writer)
        n_paths = len({r.path for ex in present if not kinds[ex].needs_real for r in kinds[ex].rules})  # type: ignore[union-attr]
        freq = v.host.freq_hz
        for r in [*real, n]:
            target = guest_before[r] if r < n else guest_before[-1]
            writers = _last_writers(exits, accounted, r, kinds, n_paths) if n_paths else {}
            if writers:
                # a copy takes its source where the guest work reached the exit that last
                # wrote it (the source moves with guest work only): run the guest to there
                for j in sorted({j for j, rule in writers.values() if rule.op == COPY}):
                    guest_done = self._guest_to(cur, guest_done, guest_before[j])
                    for j2, rule in writers.values():
                        if j2 == j and rule.op == COPY:
                            src = state_walk.value_at(adder.roots, rule.src)  # type: ignore[arg-type]
                            state_walk.assign(adder.roots, rule.path, src + rule.c)
            guest_done = self._guest_to(cur, guest_done, target)
            # what the exits up to this real one add (none of them real), summed per path
            # first: integer sums, so one addition per value is the same as one per exit
            tally: Counter[Exit] = Counter(exits[accounted:r])
            total: dict[Path, int] = {}
            for ex, times in tally.items():
                for path, d in kinds[ex].deltas:  # type: ignore[union-attr]
                    total[path] = total.get(path, 0) + d * times
            for path, d in total.items():
                adder.add(path, d)
            for j, rule in writers.values():
                # what the last exit that wrote the field left there (its exact position)
                op = rule.op
                if op == CLOCK:
                    state_walk.assign(adder.roots, rule.path, t0 + pos[j] + rule.c)
                elif op == NS:
                    state_walk.assign(adder.roots, rule.path, (t0 + pos[j] + rule.c) * 1_000_000_000 // freq)
                elif op == CONST:
                    state_walk.assign(adder.roots, rule.path, rule.c)
                elif op == NEG:
                    # its source is an accumulator: as exit j left it, without the exits after j
                    src = state_walk.value_at(adder.roots, rule.src)  # type: ignore[arg-type]
                    for ex, times in Counter(exits[j + 1 : r]).items():
                        src -= dict(kinds[ex].deltas).get(rule.src, 0) * times  # type: ignore[union-attr]
                    state_walk.assign(adder.roots, rule.path, (rule.c - src) & rule.mask)
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
        transitions = 0
        for ex, n in Counter(exits).items():
            transitions += n * len(kinds[ex].log)  # type: ignore[union-attr]
        if transitions >= RETIME_BULK * len(state) and freq < 1 << 33:
            _retime_bulk(state, exits, pos, kinds, t0, freq)
            exits = []
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


def _retime_bulk(
    state: dict[int, list[Any]],
    exits: list[Exit],
    pos: list[int],
    kinds: dict[Exit, ExitKind | None],
    t0: int,
    freq: int,
) -> None:
    """`FastForward._retime`'s loop as array operations (the same integers): every
    transition's nanosecond time is (p // freq) * 10^9 + (p % freq) * 10^9 // freq, which
    is p * 10^9 // freq exactly and stays inside int64 for freq < 2^33."""
    import numpy as np

    table = list(dict.fromkeys(exits))
    code = {ex: i for i, ex in enumerate(table)}
    codes = np.fromiter((code[ex] for ex in exits), dtype=np.int64, count=len(exits))
    base = np.array(pos[: len(exits)], dtype=np.int64) + t0
    for eid, s in state.items():
        per = [[(off, en, run) for e2, off, en, run in kinds[ex].log if e2 == eid] for ex in table]  # type: ignore[union-attr]
        sizes = np.array([len(p) for p in per], dtype=np.int64)
        lens = sizes[codes]
        total = int(lens.sum())
        if not total:
            continue
        flat = [t for p in per for t in p]
        offs = np.array([t[0] for t in flat], dtype=np.int64)
        ens = np.array([t[1] for t in flat], dtype=np.int64)
        runs = np.array([t[2] for t in flat], dtype=np.int64)
        starts = np.cumsum(sizes) - sizes
        ends = np.cumsum(lens)
        idx = np.repeat(starts[codes], lens) + np.arange(total) - np.repeat(ends - lens, lens)
        p = np.repeat(base, lens) + offs[idx]
        ns = (p // freq) * 1_000_000_000 + (p % freq) * 1_000_000_000 // freq
        en, run = ens[idx], runs[idx]
        dt = ns - np.concatenate(([s[2]], ns[:-1]))
        dt = np.where(dt > 0, dt, 0)
        s[0] += int((dt * np.concatenate(([int(s[3])], en[:-1]))).sum())
        s[1] += int((dt * np.concatenate(([int(s[4])], run[:-1]))).sum())
        s[2] = int(ns[-1])
        s[3], s[4] = bool(en[-1]), bool(run[-1])


def _last_writers(
    exits: list[Exit], lo: int, hi: int, kinds: dict[Exit, ExitKind | None], n_paths: int
) -> dict[Path, tuple[int, Rule]]:
    """For each positional field, the last of the bulk exits lo..hi-1 that sets it, and its
    rule (the exits after it leave the field alone)."""
    out: dict[Path, tuple[int, Rule]] = {}
    for j in range(hi - 1, lo - 1, -1):
        rules = kinds[exits[j]].rules  # type: ignore[union-attr]
        if rules:
            for rule in rules:
                if rule.path not in out:
                    out[rule.path] = (j, rule)
            if len(out) == n_paths:
                break
    return out


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


#: perf's time of the CPU context's last full reschedule (`CpuContext.settled.now_ns`)
_SETTLED_NS: Path = ("perf_ctx", (0, "settled"), (0, "now_ns"))
#: ... and of the one perf_load_guest_context() saw, kept for perf_put_guest_context()
#: (`CpuContext.guest_resume`: under switch_at=exit, the put's reschedule of the same exit)
_GUEST_RESUME_NS: Path = ("perf_ctx", (0, "guest_resume"), (0, "now_ns"))
_GUEST_CYCLES: Path = ("vcpu", (0, "stats"), (0, "guest_cycles"))


def _offsets(p: Probe) -> tuple[tuple[int, int], ...]:
    return tuple((c, off) for c, off, _ in p.resched)


def _last_resched(p: Probe, cpu: int) -> tuple[int, tuple[int, ...]] | None:
    """Cycles into the exit of its last perf reschedule of `cpu`, and the switched counters
    as that reschedule left them."""
    for c, off, values in reversed(p.resched):
        if c == cpu:
            return off, values
    return None


def _derive(path: Path, op: int, src: Path | None, p: Probe, freq: int, cpu: int) -> Rule | None:
    """The rule for `path` whose constant one probe gives (None: it cannot hold)."""
    v = p.after.get(path)
    if type(v) is not int:
        return None
    if op == CLOCK:
        return Rule(path, CLOCK, v - p.start)
    if op == NS:
        # the time perf took at one of the exit's reschedules of `cpu` (the latest that
        # gives the value): its cycle offset is the rule's constant
        for c, off, _ in reversed(p.resched):
            if c == cpu and v == (p.start + off) * 1_000_000_000 // freq:
                return Rule(path, NS, off)
        return None
    if op == COPY:
        assert src is not None
        w = p.after.get(src)
        return Rule(path, COPY, v - w, src) if type(w) is int else None
    if op == NEG:
        assert src is not None
        w, mask = p.after.get(src), p.after.get((*src[:-1], (0, "_mask")))
        return Rule(path, NEG, (v + w) & mask, src, mask) if type(w) is int and type(mask) is int else None
    return Rule(path, CONST, v)


def _holds(rule: Rule, p: Probe, freq: int, cpu: int) -> bool:
    """Whether the value `rule` gives is the one the probe's exit left."""
    v = p.after.get(rule.path)
    if type(v) is not int:
        return False
    op, c = rule.op, rule.c
    if op == CLOCK:
        return v == p.start + c
    if op == NS:
        # the time perf took at a reschedule of the exit, logged at its exact cycle
        return any(rc == cpu and off == c for rc, off, _ in p.resched) and v == (p.start + c) * 1_000_000_000 // freq
    if op == COPY:
        assert rule.src is not None
        w0, w1 = p.before.get(rule.src), p.after.get(rule.src)
        return type(w1) is int and w0 == w1 and v == w1 + c  # a source the exit leaves alone
    if op == NEG:
        assert rule.src is not None
        w = p.after.get(rule.src)
        return type(w) is int and p.after.get((*rule.src[:-1], (0, "_mask"))) == rule.mask and v == (c - w) & rule.mask
    return v == c


def _fit(path: Path, op: int, src: Path | None, a: Probe, b: Probe, vcpu: VCpu) -> Rule | None:
    """The declared rule for `path`, its constant from probe `a`, if it reproduces both."""
    freq, cpu = vcpu.host.freq_hz, vcpu.cpu.index
    rule = _derive(path, op, src, a, freq, cpu)
    if rule is None or not _holds(rule, a, freq, cpu) or not _holds(rule, b, freq, cpu):
        return None
    return rule


def _compared(p: Probe, cpu: int) -> list[tuple[bool, bool, int]] | None:
    """Per switched counter, what the exit's work compared: non-zero at the VM-exit, equal
    at the VM-entry to what the last reschedule left (that value). None: the exit moved a
    switched counter (not a save and a restore) or did not reschedule perf."""
    last = _last_resched(p, cpu)
    before, after = p.counters
    if last is None or before != after:
        return None
    return [(v != 0, v == h, h) for v, h in zip(before, last[1], strict=True)]


def _period_paths(view: dict[Path, Any]) -> list[Path]:
    return [q for q in view if q[0] == "events" and len(q) == 3 and q[2] == (0, "period_left")]


def _follows(q: Path, h: int, mask: int, p: Probe) -> bool:
    """Whether `h` is the counter of a sampling event whose period_left is at `q` as the
    exit leaves it (x86_perf_event_set_period() starts it at -left; it counts up)."""
    left = p.after.get(q)
    return type(left) is int and left > 0 and (h + left) & mask == 0


def _learn_tests(a: Probe, b: Probe, vcpu: VCpu, declared: Declared) -> tuple[CounterTest, ...] | None:
    """The comparisons on the switched counters, as both probes made them (None: they made
    them otherwise, or what a counter is compared with moved in a way no rule follows)."""
    cpu = vcpu.cpu.index
    ta, tb = _compared(a, cpu), _compared(b, cpu)
    if ta is None or tb is None:
        return None
    out = []
    for slot, ((za, ea, ha), (zb, eb, hb), (_, _, mask)) in enumerate(zip(ta, tb, declared.counters, strict=True)):
        if za != zb or ea != eb:
            return None
        if ha == hb:
            out.append(CounterTest(slot, za, ea, ha, None, mask))
            continue
        if ea:
            return None
        # a host sampling event used the counter in the exit: it holds -period_left
        follows = [q for q in _period_paths(a.after) if _follows(q, ha, mask, a) and _follows(q, hb, mask, b)]
        if len(follows) != 1:
            return None
        out.append(CounterTest(slot, za, False, 0, follows[0], mask))
    return tuple(out)


def _tests_hold(tests: tuple[CounterTest, ...], p: Probe, cpu: int) -> bool:
    got = _compared(p, cpu)
    if got is None:
        return False
    for t in tests:
        z, e, h = got[t.slot]
        if z != t.nonzero or e != t.equal:
            return False
        if t.follows is None and h != t.h:
            return False
        if t.follows is not None and not _follows(t.follows, h, t.mask, p):
            return False
    return True


def _learn(a: Probe, b: Probe, vcpu: VCpu, declared: Declared | None = None) -> ExitKind | None:
    """What one exit does, from two probes at one signature; None if it is not an exit the
    fast-forward can repeat exactly. A value the probes moved by different amounts is set
    by a declared rule that reproduces it after both (`declared`), or makes the kind
    needs_real."""
    if a.dur != b.dur or a.log != b.log or _offsets(a) != _offsets(b):
        return None
    if set(b.before) != set(b.after) or not set(a.before) <= set(a.after):
        return None  # the exit grows or drops state
    for p in a.after.keys() - a.before.keys():
        if type(a.after[p]) is not int:
            return None  # only a new integer key (a first charge of an operation) may appear
    ops = declared.ops if declared is not None else {}
    deltas: list[tuple[Path, int]] = []
    rules: list[Rule] = []
    needs_real = False
    for p, vb1 in b.after.items():
        vb0 = b.before[p]
        va0 = a.before.get(p, 0)
        va1 = a.after.get(p, va0)
        if va0 == va1 and vb0 == vb1:
            continue
        if type(va1) is not int or type(vb1) is not int or type(va0) is not int or type(vb0) is not int:
            return None  # a flag, a name or a float changed: not an accumulator
        op = ops.get(p)
        if op is not None:
            # a positional field: set by its rule, never added (two probes may move a
            # position by the same amount by chance)
            rule = _fit(p, op[0], op[1], a, b, vcpu)
            if rule is None:
                needs_real = True
            else:
                rules.append(rule)
            continue
        da, db = va1 - va0, vb1 - vb0
        if da == db:
            deltas.append((p, da))
        else:
            needs_real = True
    tests: tuple[CounterTest, ...] = ()
    if rules and not needs_real and declared is not None and declared.counters:
        learned = _learn_tests(a, b, vcpu, declared)
        if learned is None:
            needs_real = True
        else:
            tests = learned
    if rules and (a.pre != a.post or b.pre != b.post):
        # the exit before a probe left the mode's fields otherwise than the probe's own
        # exit does (a host tick or a PMI came between, or a kind that leaves them alone):
        # what the probe added may depend on it
        needs_real = True
    if needs_real:
        rules, tests = [], ()  # every exit of the kind runs for real and sets them itself
    ipc = max(100, vcpu.costs.exit_host_ipc_x100)
    changed = frozenset(p for p, v in b.after.items() if b.before[p] != v) | frozenset(
        p for p, v in a.after.items() if a.before.get(p) != v
    )
    ends = a.post if a.post == b.post else None
    return ExitKind(
        a.dur, deltas, needs_real, a.log, a.dur * ipc // 100 + 1, changed, tuple(rules), tests, _offsets(a), ends
    )


_EXITS_BY_REASON = ("vcpu", (0, "stats"), (0, "exits"))


def _rename_reason(p: Path, old: str, new: str) -> Path:
    return (*_EXITS_BY_REASON, (1, new)) if p[:3] == _EXITS_BY_REASON and p[3:] == ((1, old),) else p


def _learn_from_sibling(
    p: Probe, sib: ExitKind, sib_reason: str, reason: str, vcpu: VCpu, declared: Declared | None = None
) -> ExitKind | None:
    """What an exit does, from one probe and a learned exit of another reason on the same
    path (fastpath, slow, to userspace): accepted only if the probe moved exactly what the
    sibling moves, by exactly as much where the sibling is an accumulator, the exit-reason
    count renamed, and left every positional field and counter comparison as the sibling's
    rules say. Otherwise a second probe decides (`_learn`)."""
    if p.dur != sib.dur or p.log != sib.log or _offsets(p) != sib.resched or not set(p.before) <= set(p.after):
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
    if sib.rules and (p.pre != p.post or p.post != sib.ends):
        return None  # see _learn: a second probe decides
    freq, cpu = vcpu.host.freq_hz, vcpu.cpu.index
    if not all(_holds(r, p, freq, cpu) for r in sib.rules):
        return None
    if sib.tests and (declared is None or not _tests_hold(sib.tests, p, cpu)):
        return None
    deltas = [(_rename_reason(q, sib_reason, reason), d) for q, d in sib.deltas]
    positional = {r.path for r in sib.rules}
    if not sib.needs_real and dict(deltas) != {q: d for q, d in moved.items() if q not in positional}:
        return None
    return ExitKind(
        sib.dur,
        deltas,
        sib.needs_real,
        sib.log,
        sib.host_events,
        frozenset(expected),
        sib.rules,
        sib.tests,
        sib.resched,
        sib.ends,
    )
