"""A host CPU: its clock, physical PMU, facilities, runqueue and timer (mux rotation)."""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING, Any

from vpmu_core.events import split_counts
from vpmu_core.hw.pmu import Overflow
from vpmu_core.ledgers.truth import TruthLedger
from vpmu_core.logs import get_logger

if TYPE_CHECKING:
    from vpmu_core.engine.machine import Machine
    from vpmu_core.engine.task import Task

log = get_logger("vpmu.engine")


class CpuPort:
    """The register port host perf programs: the physical PMU, then the CPU's facilities."""

    __slots__ = ("cpu", "pmu", "facilities")

    def __init__(self, cpu: HostCpu) -> None:
        self.cpu = cpu
        self.pmu = cpu.pmu
        self.facilities = cpu.facilities

    def rdmsr(self, msr: int) -> int:
        if self.pmu.has_msr(msr):
            return self.pmu.rdmsr(msr)
        for f in self.facilities.values():
            if f.has_msr(msr):
                return f.rdmsr(msr)
        return self.pmu.rdmsr(msr)  # #GP

    def wrmsr(self, msr: int, value: int) -> None:
        if self.pmu.has_msr(msr):
            self.pmu.wrmsr(msr, value)
            return
        for f in self.facilities.values():
            if f.has_msr(msr):
                f.wrmsr(msr, value)
                return
        self.pmu.wrmsr(msr, value)

    def rdpmc(self, ecx: int) -> int:
        return self.pmu.rdpmc(ecx)

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        return self.cpu.host.cpuid.get(leaf, subleaf)

    @property
    def entry_loads(self) -> dict[int, int]:
        """The MSR values VM-entry loads (read by `GlobalCtrlSplit.apply`, which replaces the
        list and so must see the entries it does not own)."""
        return self.pmu.entry_loads

    def set_entry_loads(self, loads: dict[int, int]) -> None:
        self.pmu.set_entry_loads(loads)

    def batched(self) -> Any:
        """One PMU decode for a sequence of writes in which nothing counts (perf resched)."""
        return self.pmu.batched_refresh()


class HostCpu:
    """One logical CPU. Time is in cycles (`now`); tasks pinned here share it round-robin."""

    def __init__(self, host: Machine, index: int) -> None:
        self.host = host
        self.index = index
        self.now = 0
        self.pmu = host.model.make_pmu(None)
        self.facilities: dict[str, Any] = {n: f.make_state(guest=False) for n, f in host.facilities.items()}
        self.port = CpuPort(self)
        self.current_task: Task | None = None
        self.tasks: list[Task] = []
        self._rr = 0
        self.slice_cycles = host.ns_to_cycles(host.sched_slice_ns)
        self.slice_left = self.slice_cycles
        self.mux_cycles = host.ns_to_cycles(host.mux_interval_ns)
        self.next_mux = self.mux_cycles
        self.idle_cycles = 0

    def __repr__(self) -> str:
        return f"HostCpu({self.index}, now={self.now})"

    def now_ns(self) -> int:
        return self.now * 1_000_000_000 // self.host.freq_hz

    def cycles_to_next_timer(self) -> int:
        return max(1, self.next_mux - self.now)

    # ---- execution ----------------------------------------------------------------------
    def run_host_span(self, task: Task, counts: tuple[int, ...], cpl: int) -> None:
        """Host-mode work of `task` on this CPU: physical counters, facilities, truth, clock."""
        cut = self.pmu.overflow_cut(counts, cpl, False)
        while cut:
            head, counts = split_counts(counts, cut)
            self._host_span(task, head, cpl)
            cut = self.pmu.overflow_cut(counts, cpl, False)
        self._host_span(task, counts, cpl)

    def span(
        self,
        task: Task,
        counts: tuple[int, ...],
        cpl: int,
        guest: bool,
        facilities: dict[str, Any],
        blocked: Container[str] = (),
    ) -> list[Overflow] | None:
        """The span step, written once for host and guest work: count `counts` (a span no
        counter wraps inside) on the physical PMU, feed the active `facilities` not in
        `blocked`, add it to the task's and this CPU's ground truth, advance the clock.
        Returns the counters that wrapped; the caller routes them (host perf or the vCPU's
        PMI exit)."""
        ov = self.pmu.accrue(counts, cpl, guest)
        if facilities:
            for name, f in facilities.items():
                if f.active and name not in blocked:
                    f.record(counts, cpl, guest, task.position)
        task.account(counts, cpl, guest)
        TruthLedger.add(self.host.cpu_truth[self.index], counts, cpl, guest)
        self.now += counts[0]
        return ov

    def _host_span(self, task: Task, counts: tuple[int, ...], cpl: int) -> None:
        ov = self.span(task, counts, cpl, False, self.facilities)
        if ov:
            self.handle_overflows(ov)
        if self.now >= self.next_mux:
            self.timer_tick()

    def handle_overflows(self, overflows: list[Overflow]) -> bool:
        """Route counter overflows: status bits, then the PMI to the mode or host perf.

        Returns True if a PMI was raised (an NMI: it forces a VM-exit if in guest mode).
        A PMI a registered claimer takes (the hypervisor, for a loaded guest context, as
        KVM's perf guest callbacks / mediated PMI vector do) never reaches host perf."""
        pmi = False
        host = self.host
        for pmc, overshoot in overflows:
            if not self.pmu.raise_overflow(pmc):
                continue
            pmi = True
            if any(claim(self, pmc, overshoot) for claim in host.pmi_claimers):
                continue
            host.costs_ledger.charge("host", "host_pmi_nmi", host.costs.host_pmi_nmi)
            if host.perf is not None:
                host.perf.handle_overflow(self.index, pmc.idx, overshoot)
        return pmi

    def timer_tick(self) -> None:
        """The scheduler tick that drives perf multiplexing (perf_mux_hrtimer_handler)."""
        while self.now >= self.next_mux:
            self.next_mux += self.mux_cycles
        perf = self.host.perf
        if perf is not None and perf.rotate(self.index):
            self.host.costs_ledger.charge("host", "perf_mux_rotation", self.host.costs.perf_mux_rotation)

    # ---- scheduling -----------------------------------------------------------------------
    def switch_to(self, task: Task | None) -> None:
        prev = self.current_task
        if prev is task:
            return
        if prev is not None:
            prev.sched_out(self)
            prev.running_on = None
        self.current_task = task
        if task is not None:
            task.running_on = self.index
        if self.host.perf is not None:
            self.host.perf.sched_task(self.index, prev, task)
        if task is not None:
            task.sched_in(self)
        self.slice_left = self.slice_cycles

    def _pick(self) -> Task | None:
        n = len(self.tasks)
        for k in range(n):
            t = self.tasks[(self._rr + k) % n]
            if t.runnable:
                self._rr = (self._rr + k) % n
                return t
        return None

    def run_until(self, target: int, until_idle: Task | None = None) -> None:
        """Run this CPU's tasks until `now >= target` (or until `until_idle` has no work)."""
        while self.now < target:
            if until_idle is not None and not until_idle.runnable:
                return
            task = self._pick()
            if task is None:
                if self.current_task is not None and self.current_task.leaves_cpu_when_idle:
                    self.switch_to(None)
                step = min(target, self.next_mux) - self.now
                self.now += step
                self.idle_cycles += step
                if self.now >= self.next_mux:
                    self.timer_tick()
                continue
            if task is not self.current_task:
                self.switch_to(task)
            budget = min(target - self.now, self.slice_left)
            used = task.run(self, budget)
            self.slice_left -= used
            if self.slice_left <= 0 or not task.runnable:
                self.slice_left = self.slice_cycles
                self._rr = (self._rr + 1) % max(1, len(self.tasks))
            if used == 0 and task.runnable:
                # a zero-cycle span: it completed without time passing
                continue
