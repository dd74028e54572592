"""Run a scenario: compose the host, build its timeline of actions, advance the clock from
action to action, and return the report.

Determinism: actions are sorted by (time, kind, declaration order) with stops before
starts before work; the clock advances to absolute times in fixed steps (duration / 100,
and every action time), whether or not anyone watches the progress. The same scenario and
seed therefore give the same report, byte for byte.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from vpmu_core.errors import ConfigError, GuestFault, PerfError
from vpmu_core.hv import state_walk
from vpmu_core.hv.config import GuestPmuConfig
from vpmu_core.hv.fast_forward import verify_requested, whole_view
from vpmu_core.logs import get_logger
from vpmu_core.perf.attr import PerfEventAttr
from vpmu_core.scenario.schema import FREQ_HZ_MAX, FREQ_HZ_MIN, GuestPerfSession, HostPerfSession, Scenario

log = get_logger("vpmu.scenario")

#: action kinds, in the order they run at the same time
STOP, START, WORK = 0, 1, 2
STEPS = 100
#: cycles per exit "steady state" starts after this share of the run (and after the last
#: guest perf session opened), so one-time costs (KVM creating its perf events when the
#: guest first enables its counters) are left out
WARMUP_SHARE = 10
#: fewer exits than this after warm-up, and a whole-run figure more than 10% off the steady
#: one: the run is too short for cycles per exit to settle (a warning says so)
STEADY_MIN_EXITS = 1000


@dataclass
class RunResult:
    scenario: Scenario
    report: dict[str, Any]
    host: Any
    timeline: Any | None = None
    #: things the scenario asked for that did not happen as written (the command prints
    #: them on stderr once; they are not part of the report)
    warnings: list[str] = field(default_factory=list)


# Protocols rather than Callable types: mypy cannot infer a default-argument lambda (the
# loop-capture idiom `lambda vi=vi: ...` used below) against a Callable type.
class _Thunk(Protocol):
    def __call__(self) -> None: ...


class _OpenOne(Protocol):
    def __call__(self, ev: Any, leader: Any, /) -> Any: ...


@dataclass(order=True)
class _Action:
    t_ns: int
    kind: int
    seq: int
    what: str = field(compare=False)
    fn: _Thunk = field(compare=False)


def compose_host(scn: Scenario, catalog: Any | None = None) -> Any:
    """`vpmu.compose()` from the scenario's composition fields (raises ConfigError)."""
    from vpmu_core.host import compose

    try:
        host = _compose(compose, scn, catalog)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # a factory refusing an option value
        raise ConfigError(
            "composition",
            f"{type(e).__name__}: {e} (cpu {scn.cpu} model_options={scn.model_options}, "
            f"mode {scn.mode} mode_options={scn.mode_options}, facility_options={scn.facility_options})",
        ) from None
    freq = getattr(host, "freq_hz", None)
    if not isinstance(freq, int) or not FREQ_HZ_MIN <= freq <= FREQ_HZ_MAX:
        # a model computing a clock of 0 or less would divide by zero or never advance
        raise ConfigError(
            "model_options.freq_hz", f"{scn.cpu} runs at {freq!r} Hz", f"{FREQ_HZ_MIN:_}..{FREQ_HZ_MAX:_}"
        )
    return host


def _compose(compose: Any, scn: Scenario, catalog: Any | None) -> Any:
    return compose(
        cpu=scn.cpu,
        mode=scn.mode,
        facilities=tuple(scn.facilities),
        cpus=scn.cpus,
        mode_options=scn.mode_options,
        costs=scn.cost_overrides(),
        seed=scn.seed,
        model_options=scn.model_options,
        facility_options=scn.facility_options,
        mux_interval_ns=scn.mux_interval_ns,
        catalog_=catalog,
    )


def _in_vm(err: ConfigError, index: int) -> ConfigError:
    """A VM-level ConfigError (`pmu.lbr: ...`) with its scenario path (`vms[0].pmu.lbr: ...`)."""
    text = str(err)
    prefix = f"{err.field}: "
    message = text[len(prefix) :] if text.startswith(prefix) else text
    out = ConfigError(f"vms[{index}].{err.field}", message)
    out.allowed = err.allowed
    return out


def _attr(ev: int | str, s: HostPerfSession | GuestPerfSession, pinned: bool, **extra: Any) -> PerfEventAttr:
    label = ev if isinstance(ev, str) else f"raw:{ev:#x}"
    return PerfEventAttr(
        type="hardware" if isinstance(ev, str) else "raw",
        config=ev,
        pinned=pinned,
        exclude_user=s.exclude_user,
        exclude_kernel=s.exclude_kernel,
        sample_period=s.sample_period,
        branch_sample_type=tuple(s.branch_sample_type),
        name=f"{s.name}/{label}",
        **extra,
    )


class _Run:
    def __init__(self, scn: Scenario, host: Any, timeline: Any | None) -> None:
        self.scn = scn
        self.host = host
        self.timeline = timeline
        self.actions: list[_Action] = []
        self.open_errors: list[dict[str, Any]] = []
        self.guest_faults: list[dict[str, Any]] = []
        self.tasks: dict[str, Any] = {}
        self.vms: dict[str, Any] = {}
        self.sessions: dict[str, list[Any]] = {}
        self.warnings: list[str] = scn.warnings()
        #: overhead snapshot at the end of warm-up: time, host cycles, exits (all vCPUs)
        self.steady: tuple[int, int, int] | None = None

    def at(self, t_ns: int, kind: int, what: str, fn: _Thunk) -> None:
        self.actions.append(_Action(t_ns, kind, len(self.actions), what, fn))

    def now_ns(self) -> int:
        return self.host.now_ns

    def _open_error(self, session: str, scope: str, ev: Any, where: str, err: Exception) -> None:
        self.open_errors.append(
            {
                "session": session,
                "scope": scope,
                "event": ev if isinstance(ev, str) else f"raw:{ev:#x}",
                "where": where,
                "errno": getattr(err, "errno", None),
                "error": str(err),
                "time_ns": self.now_ns(),
            }
        )
        log.info("scenario.open_failed", session=session, where=where, error=str(err))

    # ---- build ------------------------------------------------------------------------------
    def build(self) -> None:
        scn, host = self.scn, self.host
        for t in scn.host.tasks:
            task = host.spawn_task(t.name, cpu=t.cpu)
            self.tasks[t.name] = task
            self._queue(t, f"task {t.name}", task.execute)
        for vi, v in enumerate(scn.vms):
            if v.start_ns == 0:
                self._create_vm(vi, v)
            else:
                self.at(v.start_ns, START, f"create vm {v.name}", lambda vi=vi, v=v: self._create_vm(vi, v, timed=True))
            for w in v.work:
                targets = range(v.vcpus) if w.vcpu == "all" else [w.vcpu]
                for i in targets:
                    self._queue(w, f"{v.name}/vcpu{i}", self._vcpu_sink(v.name, i), end_ns=v.destroy_ns)
            for m in v.msrs:
                self.at(
                    m.at_ns,
                    START,
                    f"guest wrmsr {m.msr:#x}",
                    lambda m=m, n=v.name: self._with_vm(n, m, self._guest_wrmsr),
                )
            for s in v.perf:
                self.at(
                    s.start_ns,
                    START,
                    f"guest perf {s.name}",
                    lambda s=s, n=v.name: self._with_vm(n, s, self._open_guest),
                )
                if s.stop_ns is not None:
                    self.at(s.stop_ns, STOP, f"guest perf {s.name} stop", lambda s=s, n=v.name: self._stop(n, s))
            if v.destroy_ns is not None:
                self.at(v.destroy_ns, STOP, f"destroy vm {v.name}", lambda n=v.name: self._destroy_vm(n))
        for hs in scn.host.perf:
            self.at(hs.start_ns, START, f"host perf {hs.name}", lambda hs=hs: self._open_host(hs))
            if hs.stop_ns is not None:
                self.at(hs.stop_ns, STOP, f"host perf {hs.name} stop", lambda hs=hs: self._stop("host", hs))

    def _create_vm(self, vi: int, v: Any, timed: bool = False) -> None:
        """KVM_CREATE_VM + vCPUs (+ the event filter). A VM created later that KVM refuses
        (e.g. the mediated vPMU's EBUSY while a host event counts the guest) is recorded in
        `open_errors` and its actions are skipped; at time 0 a refusal fails the run."""
        try:
            vm = self.host.create_vm(
                vcpus=v.vcpus,
                pmu=GuestPmuConfig(**v.pmu.model_dump()),
                pin=v.pin,
                exits=v.exits.build(),
                name=v.name,
            )
        except ConfigError as e:
            raise _in_vm(e, vi) from None
        except PerfError as err:
            if not timed:
                raise
            self._open_error(v.name, "kvm", "KVM_CREATE_VCPU", f"vm {v.name}", err)
            return
        self._clamped(vi, v, vm)
        self.vms[v.name] = vm
        if v.event_filter is not None:
            f = v.event_filter
            vm.set_pmu_event_filter(f.action, list(f.events), f.fixed_counter_bitmap, f.masked)
        if timed:
            self._mark("scenario", f"create {v.name}")

    def _destroy_vm(self, name: str) -> None:
        vm = self.vms.get(name)
        if vm is not None:
            vm.destroy()
            self._mark("scenario", f"destroy {name}")

    def _live_vm(self, name: str) -> Any | None:
        vm = self.vms.get(name)
        return vm if vm is not None and not vm.destroyed else None

    def _with_vm(self, name: str, spec: Any, fn: Callable[[Any, Any], None]) -> None:
        vm = self._live_vm(name)
        if vm is not None:  # None: KVM refused to create it (recorded in open_errors)
            fn(vm, spec)

    def _vcpu_sink(self, name: str, i: int) -> Callable[[Any], None]:
        def sink(work: Any) -> None:
            vm = self._live_vm(name)
            if vm is not None:
                vm.vcpus[i].queue(work)

        return sink

    def _clamped(self, index: int, spec: Any, vm: Any) -> None:
        """KVM clamps a guest PMU above the host's (kvm_pmu_refresh); say so once."""
        got = vm.pmu_config
        for name in ("version", "gp_counters", "fixed_counters"):
            want = getattr(spec.pmu, name)
            have = getattr(got, name, None)
            if want is not None and have is not None and have < want:
                self.warnings.append(
                    f"vms[{index}].pmu.{name}: {want} is more than {self.scn.cpu} under mode {self.scn.mode} "
                    f"gives a guest; clamped to {have} (as KVM's kvm_pmu_refresh does)"
                )

    def _guest_wrmsr(self, vm: Any, m: Any) -> None:
        targets = vm.vcpus if m.vcpu == "all" else [vm.vcpus[m.vcpu]]
        for v in targets:
            try:
                v.wrmsr(m.msr, m.value)
            except GuestFault as f:
                self.guest_faults.append(
                    {
                        "vcpu": v.name,
                        "msr": f"{m.msr:#x}",
                        "value": f"{m.value:#x}",
                        "vector": f.vector,
                        "time_ns": self.now_ns(),
                    }
                )

    def _queue(self, spec: Any, who: str, sink: Callable[[Any], None], end_ns: int | None = None) -> None:
        """Timed work; repeats at or after `end_ns` (the VM's destroy time) are not queued."""
        work = spec.work.build()
        if spec.every_ns == 0:

            def burst() -> None:
                for _ in range(spec.repeat):
                    sink(work)

            self.at(spec.at_ns, WORK, f"work {who}", burst)
        else:
            for k in range(spec.repeat):
                t = spec.at_ns + k * spec.every_ns
                if t <= self.scn.duration_ns and (end_ns is None or t < end_ns):
                    self.at(t, WORK, f"work {who}", lambda: sink(work))

    def _mark(self, track: str, name: str, args: dict[str, Any] | None = None) -> None:
        if self.timeline is not None:
            self.timeline.mark(track, self.now_ns(), name, args)

    def _open_host(self, s: HostPerfSession) -> None:
        host = self.host
        opened: list[Any] = []
        extra = {"exclude_guest": s.exclude_guest, "exclude_host": s.exclude_host}
        if s.klass.startswith("cpu_"):
            assert s.cpu is not None, "the schema requires 'cpu' for per-CPU classes"
            cpus = list(range(len(host.cpus))) if s.cpu == "all" else [s.cpu] if isinstance(s.cpu, int) else s.cpu
            targets = [(-1, c, f"cpu{c}") for c in cpus]
        else:
            task = self.tasks.get(s.task)  # type: ignore[arg-type]
            if task is None:
                vm_name, _, vc = str(s.task).partition("/vcpu")
                vm = self._live_vm(vm_name)
                if vm is None:
                    # the vCPU thread does not exist (yet or any more): perf_event_open -> ESRCH
                    err = PerfError(errno.ESRCH, f"no vCPU thread {s.task} at this time")
                    for ev in s.events:
                        self._open_error(s.name, "host", ev, f"task {s.task}", err)
                    return
                task = vm.vcpus[int(vc)].task
            assert s.cpu is None or isinstance(s.cpu, int), "the schema allows per-task classes one CPU filter"
            targets = [(task.pid, -1 if s.cpu is None else s.cpu, f"task {s.task}")]
        for pid, cpu, where in targets:
            opened += self._open_group(
                s,
                "host",
                where,
                lambda ev, leader, pid=pid, cpu=cpu: host.perf_event_open(
                    _attr(ev, s, s.pinned, **extra), pid=pid, cpu=cpu, group=leader
                ),
            )
        self.sessions.setdefault(f"host/{s.name}", []).extend(opened)
        self._mark("scenario", f"open {s.name}", {"events": len(opened), "class": s.klass})

    def _open_group(self, s: Any, scope: str, where: str, open_one: _OpenOne) -> list[Any]:
        """Open a session's events at one place; with `group`, the first leads and a failed
        open stops the group (perf_event_open of a sibling needs its leader)."""
        opened: list[Any] = []
        leader = None
        for ev in s.events:
            try:
                e = open_one(ev, leader)
            except (PerfError, GuestFault) as err:
                self._open_error(s.name, scope, ev, where, err)
                if s.group:
                    break
                continue
            opened.append(e)
            if s.group and leader is None:
                leader = e
        return opened

    def _open_guest(self, vm: Any, s: GuestPerfSession) -> None:
        vcpus = range(len(vm.vcpus)) if s.vcpu == "all" else [s.vcpu] if isinstance(s.vcpu, int) else s.vcpu
        opened: list[Any] = []
        for i in vcpus:
            opened += self._open_group(
                s,
                f"guest:{vm.name}",
                f"vcpu{i}",
                lambda ev, leader, i=i: vm.guest_perf.perf_event_open(
                    _attr(ev, s, s.pinned), pid=-1, cpu=i, group=leader
                ),
            )
        self.sessions.setdefault(f"{vm.name}/{s.name}", []).extend(opened)
        self._mark("scenario", f"open {vm.name}:{s.name}", {"events": len(opened)})

    def _stop(self, scope: str, s: Any) -> None:
        for e in self.sessions.get(f"{scope}/{s.name}", []):
            if not e.closed:
                try:
                    e.disable()
                except (PerfError, GuestFault) as err:
                    log.info("scenario.disable_failed", session=s.name, error=str(err))
        self._mark("scenario", f"stop {s.name}")

    # ---- run ------------------------------------------------------------------------------
    def run(self, progress: Callable[[int, int], None] | None) -> None:
        for _ in self.steps(progress):
            pass

    def steps(self, progress: Callable[[int, int], None] | None = None) -> Iterator[int]:
        """Run the scenario step by step, yielding the time after each step."""
        host, dur = self.host, self.scn.duration_ns
        step = max(1, dur // STEPS)
        times = sorted({a.t_ns for a in self.actions if a.t_ns <= dur} | set(range(step, dur, step)) | {dur})
        pending = sorted(a for a in self.actions if a.t_ns <= dur)
        opens = [s.start_ns for v in self.scn.vms for s in v.perf if s.start_ns < dur]
        warmup = max(dur // WARMUP_SHARE, *opens, 0)
        k = 0
        for t in [0, *times]:
            host.sync(host.ns_to_cycles(t))
            while k < len(pending) and pending[k].t_ns <= t:
                a = pending[k]
                k += 1
                log.debug("scenario.action", t_ns=t, what=a.what)
                a.fn()
            if self.steady is None and t >= warmup and t < dur:
                self.steady = (t, *self._overhead_now())
            if progress is not None:
                progress(t, dur)
            yield t

    def _overhead_now(self) -> tuple[int, int]:
        cycles = exits = 0
        for vm in self.vms.values():
            for v in vm.vcpus:
                cycles += self.host.costs_ledger.total(v.name)
                exits += v.stats.total_exits
        return cycles, exits

    def steady_state(self) -> dict[str, Any]:
        """Overhead after warm-up (see WARMUP_SHARE), for `summary`."""
        if self.steady is None:
            return {"from_ns": self.scn.duration_ns, "exits": 0, "overhead_cycles": 0}
        t0, c0, e0 = self.steady
        c1, e1 = self._overhead_now()
        return {"from_ns": t0, "exits": e1 - e0, "overhead_cycles": c1 - c0}


#: VPMU_FF_VERIFY compares the whole state of the two runs this many times over a run
VERIFY_POINTS = 8


class FastForwardMismatch(AssertionError):
    """VPMU_FF_VERIFY: the fast-forwarded run and its one-by-one twin differ."""


def _run_shadowed(r: _Run, twin: _Run, progress: Callable[[int, int], None] | None) -> None:
    """VPMU_FF_VERIFY: run `r` (fast-forward on) and `twin` (one exit at a time) in lockstep
    and compare their whole state (every value reachable from the host) at VERIFY_POINTS
    steps and at the end; a difference names the first values that moved apart."""
    twin.build()
    every = max(1, STEPS // VERIFY_POINTS)
    for n, (t, t2) in enumerate(zip(r.steps(progress), twin.steps(), strict=True)):
        assert t == t2
        if n % every == 0 or t >= r.scn.duration_ns:
            a, b = whole_view(r.host), whole_view(twin.host)
            if a != b:
                raise FastForwardMismatch(
                    f"fast-forward differs from one-by-one at t={t} ns: " + "; ".join(state_walk.diff(a, b))
                )


def _mean_max(values: list[float]) -> tuple[float, float]:
    return (round(sum(values) / len(values), 4), round(max(values), 4)) if values else (0.0, 0.0)


def summarize(report: dict[str, Any], steady: dict[str, Any] | None = None) -> dict[str, Any]:
    """Headline numbers for `vpmu compare` and the report's `summary` section.

    Guest error is the perf-stat scaled value against the truth (`scaled_error_pct`: plain
    multiplexing is an estimate, not a silent error); the raw count's error is kept under
    `..._raw_...`. Host events a mode refused count in `host_refused_events`, beside the
    loss of the events that did open. `steady`: overhead after warm-up (the runner's)."""
    guest = [e for e in report["events"] if e["scope"].startswith("guest:")]
    raw_mean, raw_max = _mean_max([abs(e["error_pct"]) for e in guest if e["error_pct"] is not None])
    sc_mean, sc_max = _mean_max([abs(e["scaled_error_pct"]) for e in guest if e["scaled_error_pct"] is not None])
    host_loss = report["host_loss"]
    lost = sum(max(0, h["lost"]) for h in host_loss)
    truth = sum(h["truth"] for h in host_loss)
    host_events = sum(1 for e in report["events"] if e["scope"] == "host")
    refused = sum(1 for e in report.get("open_errors", []) if e["scope"] == "host")
    exits: dict[str, int] = {}
    overhead_cycles = guest_cycles = total_exits = guest_instructions = 0
    for name, o in report["overhead"].items():
        if name == "host":
            continue
        for r, n in o["exits"].items():
            exits[r] = exits.get(r, 0) + n
        overhead_cycles += o["total_overhead_cycles"]
        guest_cycles += o["guest_cycles"]
        guest_instructions += o.get("guest_instructions", 0)
        total_exits += o["total_exits"]
    freq = report.get("freq_hz") or 0
    perf_calls = {}
    for scope, st in report["perf_api"].items():
        perf_calls[scope] = sum(st.values())
    st = steady or {"from_ns": 0, "exits": total_exits, "overhead_cycles": overhead_cycles}
    return {
        "guest_events": len(guest),
        "guest_instructions": guest_instructions,
        "guest_mean_abs_error_pct": sc_mean,
        "guest_max_abs_error_pct": sc_max,
        "guest_mean_abs_raw_error_pct": raw_mean,
        "guest_max_abs_raw_error_pct": raw_max,
        "silent_errors": len(report["silent_errors"]),
        "silent_error_total_ns": report["silent_error_total_ns"],
        "host_events": host_events,
        "host_events_refused": refused,
        "host_refused_pct": round(refused * 100.0 / (host_events + refused), 4) if refused else 0.0,
        "host_lost_counts": lost,
        "host_lost_pct": round(lost * 100.0 / truth, 4) if truth else 0.0,
        "exits": dict(sorted(exits.items())),
        "total_exits": total_exits,
        "overhead_cycles": overhead_cycles,
        "cycles_per_exit": round(overhead_cycles / total_exits, 2) if total_exits else 0.0,
        "cycles_per_exit_steady": round(st["overhead_cycles"] / st["exits"], 2) if st["exits"] else 0.0,
        "steady_from_ns": st["from_ns"],
        "steady_exits": st["exits"],
        "overhead_cycles_per_guest_second": round(overhead_cycles * freq / guest_cycles, 1)
        if guest_cycles and freq
        else 0.0,
        "perf_api_calls": dict(sorted(perf_calls.items())),
        "leaks": len(report["leaks"]["leaks"]),
        "open_errors": len(report.get("open_errors", [])),
    }


def run_scenario(
    scn: Scenario,
    *,
    catalog: Any | None = None,
    trace: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Compose, run and report. Raises ConfigError (bad composition) or PerfError/... (run)."""
    host = compose_host(scn, catalog)
    timeline = None
    shadow = None
    if verify_requested() and host.fast_forward and not trace:
        shadow = compose_host(scn, catalog)
        shadow.fast_forward = False
    if trace:
        from vpmu_core.metrics.timeline import Timeline

        timeline = Timeline(host)
        host.set_tracer(timeline)
    r = _Run(scn, host, timeline)
    r.build()
    if shadow is None:
        r.run(progress)
    else:
        _run_shadowed(r, _Run(scn, shadow, None), progress)
    if timeline is not None:
        timeline.finish(host.now_ns)
    report = host.report()
    report["scenario"] = {"name": scn.name, "description": scn.description, "duration_ns": scn.duration_ns}
    report["freq_hz"] = host.freq_hz
    report["open_errors"] = r.open_errors
    report["guest_faults"] = r.guest_faults
    report["summary"] = summary = summarize(report, r.steady_state())
    cpe, steady_cpe = summary["cycles_per_exit"], summary["cycles_per_exit_steady"]
    if steady_cpe and summary["steady_exits"] < STEADY_MIN_EXITS and abs(cpe - steady_cpe) > 0.1 * steady_cpe:
        r.warnings.append(
            f"cycles per exit has not settled: {cpe:,.0f} over the run, {steady_cpe:,.0f} after warm-up "
            f"({summary['steady_exits']} exits from {summary['steady_from_ns'] / 1e6:g} ms): too few exits after "
            "warm-up for one-time costs to wash out (run longer, or give the guests more work)"
        )
    return RunResult(scn, report, host, timeline, warnings=r.warnings)
