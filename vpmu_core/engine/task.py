"""Host tasks: queues of host-mode work, time-sliced by the CPU they are pinned to."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from vpmu_core.events import Work, WorkCursor
from vpmu_core.ledgers.truth import TruthLedger

if TYPE_CHECKING:
    from vpmu_core.engine.cpu import HostCpu
    from vpmu_core.engine.machine import Machine


class Task:
    """A host task (thread). `execute()` queues work; time passes with `host.advance()`."""

    kind = "task"
    #: a task with no work blocks and is switched out (a vCPU in HLT: kvm_vcpu_block ->
    #: schedule()); a plain host task stays current until another is picked
    leaves_cpu_when_idle = False

    def __init__(self, host: Machine, pid: int, name: str, cpu: int) -> None:
        self.host = host
        self.pid = pid
        self.name = name
        self.cpu = cpu
        #: perf task context: group leaders of per-task events (pid == self.pid)
        self.perf_events: list[Any] = []
        self.running_on: int | None = None
        self.last_ns = 0
        self.queue: deque[WorkCursor] = deque()
        self.owner = f"task:{name}[{pid}]"
        self._truth = host.truth.slots(self.owner)
        self.position = 0  # cycles executed so far: stream position for facility records

    def __repr__(self) -> str:
        return f"Task({self.name}, pid={self.pid}, cpu={self.cpu})"

    def execute(self, work: Work) -> None:
        """Queue host work; it runs as time passes (`host.advance`)."""
        if not isinstance(work, Work):
            raise TypeError("execute() takes a vpmu.Work")
        self.queue.append(WorkCursor(work))

    # ---- preempt notifiers (include/linux/preempt.h: sched_in / sched_out) -----------------
    def sched_in(self, cpu: HostCpu) -> None:
        """The scheduler switched to this task on `cpu` (after perf's task switch)."""

    def sched_out(self, cpu: HostCpu) -> None:
        """The scheduler is switching away from this task on `cpu` (before perf's)."""

    @property
    def runnable(self) -> bool:
        return bool(self.queue)

    def run(self, cpu: HostCpu, budget: int) -> int:
        """Run up to `budget` cycles of queued work on `cpu`; return cycles used."""
        used = 0
        while self.queue and used < budget:
            cur = self.queue[0]
            step = min(budget - used, cpu.cycles_to_next_timer())
            counts = cur.take(max(1, step))
            cpu.run_host_span(self, counts, cur.work.cpl)
            used += counts[0]
            if cur.finished:
                self.queue.popleft()
            if counts[0] == 0 and not cur.finished:
                break
        return used

    def account(self, counts: tuple[int, ...], cpl: int, guest: bool) -> None:
        TruthLedger.add(self._truth, counts, cpl, guest)
        self.position += counts[0]
