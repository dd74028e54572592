"""The Host: one composition of CPU model, facilities and mode, with its CPUs, tasks, VMs,
host perf, clock, ground truth, costs and the checks the report is built from."""

from __future__ import annotations

import errno
import zlib
from typing import TYPE_CHECKING, Any

from vpmu_core.costs import CostLedger, CostModel
from vpmu_core.engine.cpu import HostCpu
from vpmu_core.engine.task import Task
from vpmu_core.engine.truth import TruthLedger
from vpmu_core.errors import ConfigError, PerfError
from vpmu_core.events import N_KINDS
from vpmu_core.logs import get_logger
from vpmu_core.metrics.silent import LeakLog, SilentErrors
from vpmu_core.perf.attr import PerfEventAttr
from vpmu_core.perf.core import PerfSubsystem
from vpmu_core.perf.event import PerfEvent

if TYPE_CHECKING:
    from vpmu_core.engine.exits import ExitProfile
    from vpmu_core.hv.config import GuestPmuConfig
    from vpmu_core.hv.vm import VM
    from vpmu_core.plugins.resolve import ResolvedHooks

log = get_logger("vpmu.engine")


def derive_seed(seed: int, *parts: object) -> int:
    """A stable sub-seed (independent of PYTHONHASHSEED)."""
    return zlib.crc32(repr((seed, *parts)).encode()) ^ (seed * 0x9E3779B1 & 0xFFFFFFFF)


class Host:
    """Built by `vpmu.compose()`; see DESIGN §5 for the API."""

    def __init__(
        self,
        *,
        model: Any,
        facilities: dict[str, Any],
        hooks: ResolvedHooks,
        mode: Any,
        mode_name: str,
        mode_options: dict[str, Any],
        costs: CostModel,
        cpus: int,
        seed: int,
        mux_interval_ns: int = 4_000_000,
        sched_slice_ns: int = 3_000_000,
        composition: dict[str, Any] | None = None,
    ) -> None:
        if cpus < 1:
            raise ConfigError("cpus", f"must be >= 1, got {cpus}")
        self.model = model
        self.freq_hz: int = model.freq_hz
        self.facilities = facilities
        self.hooks = hooks
        self.mode = mode
        self.mode_name = mode_name
        self.mode_options = mode_options
        self.costs = costs
        self.seed = seed
        self.sched_slice_ns = sched_slice_ns
        self.composition = composition or {}
        self.cpuid = model.cpuid_table(None)
        for f in facilities.values():
            f.adjust_cpuid(self.cpuid, guest=False)
        self.truth = TruthLedger()
        self.cpu_truth: list[list[list[int]]] = [[[0] * N_KINDS for _ in range(4)] for _ in range(cpus)]
        self.costs_ledger = CostLedger()
        self.silent = SilentErrors()
        self.leaks = LeakLog()
        self.tasks: dict[int, Task] = {}
        #: every VM created on this host, in creation order; destroyed ones stay (flagged
        #: `vm.destroyed`) so the report keeps their figures
        self.vms: list[VM] = []
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
        self.perf.open_filter = self._open_filter
        self.perf.truth_source = self._truth_for
        self.perf.on_ipi = lambda cpu: self.costs_ledger.charge("host", "perf_ipi", self.costs.perf_ipi)
        self.user_events: list[PerfEvent] = []
        #: optional timeline recorder (see vpmu_core/metrics/timeline.py); None = off (fast)
        self.tracer: Any = None
        self.truth_windows: dict[int, Any] = {}
        if hasattr(mode, "attach"):
            mode.attach(self)

    def set_tracer(self, tracer: Any) -> None:
        """Record a timeline: VM-entries/exits, PMIs, counter ownership, event states."""
        self.tracer = tracer
        assert self.perf is not None
        self.perf.tracer = tracer
        for vm in self.vms:
            if vm._guest_perf is not None:
                vm._guest_perf.perf.tracer = tracer

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
    def _open_filter(self, attr: PerfEventAttr, pid: int, cpu: int) -> int | None:
        return self.hooks.host_perf_event_open(attr=attr, pid=pid, cpu=cpu)

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

    # ---- VMs --------------------------------------------------------------------------------
    def create_vm(
        self,
        vcpus: int = 1,
        pmu: GuestPmuConfig | None = None,
        pin: list[int] | None = None,
        exits: ExitProfile | None = None,
        name: str | None = None,
    ) -> VM:
        from vpmu_core.engine.exits import ExitProfile
        from vpmu_core.hv.config import GuestPmuConfig
        from vpmu_core.hv.vm import VM

        taken = {vm.name for vm in self.vms}
        if name is None:
            n = len(self.vms)
            while f"vm{n}" in taken:
                n += 1
            name = f"vm{n}"
        if name in taken:
            # vCPU names key the ledgers: a destroyed VM keeps its figures under its name
            raise ConfigError("name", f"a VM named {name!r} already exists on this host (destroyed VMs keep theirs)")
        vm = VM(
            self,
            name,
            vcpus=vcpus,
            pmu=pmu or GuestPmuConfig(),
            pin=pin,
            exits=exits or ExitProfile(),
        )
        return vm

    # ---- reports --------------------------------------------------------------------------
    def report(self) -> Any:
        from vpmu_core.metrics.report import build_report

        return build_report(self)
