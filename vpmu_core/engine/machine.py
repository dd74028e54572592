"""The machine: the host CPUs with their clocks, physical PMUs and run queues, the host
tasks, host perf, and the ledgers (truth, costs, silent errors, leaks).

The engine layer: it knows nothing of VMs, modes or plugins. The hypervisor plugs in the way
KVM does in Linux: its vCPU threads are tasks with preempt notifiers (`Task.sched_in/out`),
it claims PMIs through `pmi_claimers` (perf_register_guest_info_callbacks) and may veto
host perf_event_open through `perf.open_filter`. `vpmu_core.host.Host` is the machine with
the hypervisor on it."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vpmu_core.costs import CostModel
from vpmu_core.engine.cpu import HostCpu
from vpmu_core.engine.task import Task
from vpmu_core.errors import ConfigError, PerfError
from vpmu_core.events import N_KINDS
from vpmu_core.ledgers.costs import CostLedger
from vpmu_core.ledgers.silent import LeakLog, SilentErrors
from vpmu_core.ledgers.truth import TruthLedger
from vpmu_core.logs import get_logger
from vpmu_core.perf.attr import PerfEventAttr
from vpmu_core.perf.core import PerfSubsystem
from vpmu_core.perf.event import PerfEvent

if TYPE_CHECKING:
    from vpmu_core.hw.pmc import Pmc

log = get_logger("vpmu.engine")


class Machine:
    """The host machine of a composition (see module docstring)."""

    def __init__(
        self,
        *,
        model: Any,
        facilities: dict[str, Any],
        costs: CostModel,
        cpus: int,
        seed: int,
        mux_interval_ns: int = 4_000_000,
        sched_slice_ns: int = 3_000_000,
    ) -> None:
        if cpus < 1:
            raise ConfigError("cpus", f"must be >= 1, got {cpus}")
        self.model = model
        self.freq_hz: int = model.freq_hz
        self.facilities = facilities
        self.costs = costs
        self.seed = seed
        self.sched_slice_ns = sched_slice_ns
        self.cpuid = model.cpuid_table(None)
        for f in facilities.values():
            f.adjust_cpuid(self.cpuid, guest=False)
        self.truth = TruthLedger()
        self.cpu_truth: list[list[list[int]]] = [[[0] * N_KINDS for _ in range(4)] for _ in range(cpus)]
        self.costs_ledger = CostLedger()
        self.silent = SilentErrors()
        self.leaks = LeakLog()
        self.tasks: dict[int, Task] = {}
        self._next_pid = 100
        self.mux_interval_ns = mux_interval_ns
        self.perf: PerfSubsystem | None = None
        self.cpus: list[HostCpu] = [HostCpu(self, i) for i in range(cpus)]
        self.perf = PerfSubsystem(
            model.make_driver(),
            self.cpus,
            name="host",
            task_lookup=self.tasks.get,
            mux_interval_ns=mux_interval_ns,
        )
        self.perf.truth_source = self._truth_for
        self.perf.on_ipi = lambda cpu: self.costs_ledger.charge("host", "perf_ipi", self.costs.perf_ipi)
        self.user_events: list[PerfEvent] = []
        #: optional timeline recorder (see vpmu_core/metrics/timeline.py); None = off (fast)
        self.tracer: Any = None
        self.truth_windows: dict[int, Any] = {}
        #: who may take a host PMI before host perf sees it: (cpu, pmc, overshoot) -> True
        #: if claimed (perf_register_guest_info_callbacks; the mediated vPMU's PMI vector)
        self.pmi_claimers: list[Callable[[HostCpu, Pmc, int], bool]] = []

    #: fast-forward background VM-exits where a mode allows it (hv/fast_forward.py); exact,
    #: so off only to measure it or to shadow it (`VPMU_FF=0`)
    fast_forward: bool = True

    def set_tracer(self, tracer: Any) -> None:
        """Record a timeline: VM-entries/exits, PMIs, counter ownership, event states."""
        self.tracer = tracer
        assert self.perf is not None
        self.perf.tracer = tracer

    # ---- time ---------------------------------------------------------------------------
    def ns_to_cycles(self, ns: int) -> int:
        return ns * self.freq_hz // 1_000_000_000

    @property
    def now_ns(self) -> int:
        return max(c.now for c in self.cpus) * 1_000_000_000 // self.freq_hz

    def advance(self, ns: int) -> None:
        """Let `ns` of time pass on every CPU: runnable tasks and vCPUs run their work."""
        if ns < 0:
            raise ValueError("advance(ns) needs ns >= 0")
        target = max(c.now for c in self.cpus) + self.ns_to_cycles(ns)
        self.sync(target)

    def sync(self, target: int) -> None:
        for c in self.cpus:
            if c.now < target:
                c.run_until(target)

    # ---- tasks ------------------------------------------------------------------------------
    def spawn_task(self, name: str, cpu: int | None = None) -> Task:
        if cpu is None:
            cpu = min(range(len(self.cpus)), key=lambda i: (len(self.cpus[i].tasks), i))
        if not 0 <= cpu < len(self.cpus):
            raise ConfigError("cpu", f"{cpu} is not a host CPU", f"0..{len(self.cpus) - 1}")
        pid = self._next_pid
        self._next_pid += 1
        t = Task(self, pid, name, cpu)
        self._add_task(t)
        return t

    def _add_task(self, t: Task) -> None:
        self.tasks[t.pid] = t
        self.cpus[t.cpu].tasks.append(t)

    def _alloc_pid(self) -> int:
        pid = self._next_pid
        self._next_pid += 1
        return pid

    # ---- ground truth for perf events -----------------------------------------------
    def truth_rows(self, slots: list[list[int]] | None, kind: int | None, rows: tuple[int, ...]) -> int:
        if slots is None or kind is None:
            return 0
        return sum(slots[r][kind] for r in rows)

    def _truth_for(self, ev: PerfEvent) -> int:
        a = ev.attr
        rows = tuple(
            r
            for r in range(4)
            if not (r >= 2 and a.exclude_guest)
            and not (r < 2 and a.exclude_host)
            and not (r % 2 == 0 and a.exclude_kernel)
            and not (r % 2 == 1 and a.exclude_user)
        )
        slots = self.truth.owners.get(ev.task.owner) if ev.task is not None else self.cpu_truth[ev.cpu]
        return self.truth_rows(slots, ev.hw.kind, rows)

    # ---- host perf ------------------------------------------------------------------------
    def perf_event_open(
        self, attr: PerfEventAttr, pid: int = -1, cpu: int = -1, group: PerfEvent | None = None
    ) -> PerfEvent:
        """perf_event_open(2) on the host. Errors raise `PerfError` with `.errno`."""
        if not isinstance(attr, PerfEventAttr):
            raise PerfError(errno.EINVAL, "attr must be a vpmu.PerfEventAttr")
        assert self.perf is not None
        ev = self.perf.perf_event_open(attr, pid, cpu, group)
        self.user_events.append(ev)
        return ev
