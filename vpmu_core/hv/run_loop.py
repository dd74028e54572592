"""The vCPU run loop (arch/x86/kvm/x86.c `vcpu_run` / `vcpu_enter_guest`).

Run-loop boundaries: `vcpu_run` (the KVM_RUN ioctl), the inner run loop of
`vcpu_enter_guest` (fastpath exits re-enter without leaving it), and VM-entry/exit. Every
boundary calls the composed mode's hooks. Background exits come from the exit process; the
PMI is delivered through the vLAPIC LVTPC at VM-entry (KVM_REQ_PMI) and the guest kernel's
PMI handler runs at the overflow point. Host cycles charged in an exit become host-mode work
of the vCPU's task at the end of the exit.

`RunLoop` is a mixin of `VCpu` (hv/vcpu.py), which builds the state it names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vpmu_core.errors import GuestFault
from vpmu_core.events import N_KINDS, Work, WorkCursor
from vpmu_core.hv.guest_facing import guest_facing

if TYPE_CHECKING:
    from vpmu_core.costs import CostModel
    from vpmu_core.engine.cpu import HostCpu
    from vpmu_core.engine.exits import ExitProcess
    from vpmu_core.host import Host
    from vpmu_core.hv.fast_forward import FastForward
    from vpmu_core.hv.lapic import LvtPc
    from vpmu_core.hv.vcpu import VcpuStats, VcpuTask
    from vpmu_core.hv.vm import VM

_ZEROS = (0,) * (N_KINDS - 3)


def _emulate(handler: Callable[[], Any]) -> tuple[Any, GuestFault | None]:
    """Run the exiting instruction's emulation; a fault it raises is delivered after the
    round trip completes (the guest sees it at VM-entry)."""
    try:
        return handler(), None
    except GuestFault as f:
        return None, f


@dataclass(frozen=True)
class Pmi:
    """A virtual PMI delivered through the vLAPIC LVTPC."""

    time_ns: int
    vector: int
    nmi: bool


class RunLoop:
    """Entering and leaving guest mode, running guest work, delivering the PMI."""

    if TYPE_CHECKING:
        # the vCPU state the run loop reads and writes (built by VCpu.__init__)
        vm: VM
        host: Host
        name: str
        hooks: Any
        costs: CostModel
        task: VcpuTask
        pmu: Any
        facilities: dict[str, Any]
        facility_blocked: set[str]
        direct_count: bool
        lapic: LvtPc
        _lvtpc_mask_on_pmi: bool
        pmis: list[Pmi]
        stats: VcpuStats
        exit_process: ExitProcess
        in_vcpu_run: bool
        in_run_loop: bool
        in_guest: bool
        loaded_on: int | None
        _pmi_requested: bool
        _exit_cycles: int
        _in_exit: bool
        guest_pmi_handler: Callable[[Any], None] | None  # called with the VCpu
        _guest_pmi_due: bool
        _in_guest_handler: bool
        guest_tick_cycles: int
        _guest_tick_left: int
        guest_tick: Callable[[Any], None] | None  # called with the VCpu
        fast_forward: FastForward | None

        @property
        def cpu(self) -> HostCpu: ...

    def charge(self, op: str, cycles: int, n: int = 1) -> None:
        """Charge host cycles for an operation; they become host-mode work of this vCPU's
        task at the end of the current exit (or right away outside one)."""
        self.host.costs_ledger.charge(self.name, op, cycles, n)
        self._exit_cycles += cycles
        if not self._in_exit:
            self._flush_host_work()

    @property
    def charges_deferred(self) -> bool:
        """Whether `charge` only queues host cycles now (inside an exit: they run as host-mode
        work at its end), so nothing counts on the physical PMU until then."""
        return self._in_exit

    @property
    def pending_host_cycles(self) -> int:
        """Host cycles charged in the current exit and not yet run as host-mode work."""
        return self._exit_cycles

    def kick(self, reason: str = "kick") -> None:
        """kvm_vcpu_kick(): force a VM-exit (an IPI) so pending requests are serviced at the
        next entry. No-op when the vCPU is not in guest mode."""
        if self.in_guest and self.cpu.current_task is self.task:
            self._exit(reason, False, False)

    def request_pmi(self) -> None:
        """KVM_REQ_PMI: deliver a PMI through the LVTPC at the next VM-entry."""
        self._pmi_requested = True

    # ---- run-loop boundaries ------------------------------------------------------------
    def _sched_in(self, cpu: HostCpu) -> None:
        self.loaded_on = cpu.index
        self.hooks.vcpu_load(vcpu=self, cpu=cpu)

    def _sched_out(self, cpu: HostCpu) -> None:
        if self.in_guest:
            # preempted or blocked: an exit that leaves the run loop (external interrupt / HLT)
            reason = "external_interrupt" if self.task.runnable else "hlt"
            self._exit(reason, False, False, reenter=False)
        if self.in_run_loop:
            self.in_run_loop = False
            self._in_exit = True
            self.hooks.run_loop_leave(vcpu=self)
            self._in_exit = False
            self._flush_host_work()
        self.hooks.vcpu_put(vcpu=self, cpu=cpu)
        self.loaded_on = None

    def _ensure_in_guest(self) -> None:
        cpu = self.cpu
        if cpu.current_task is not self.task:
            cpu.switch_to(self.task)
        if not self.in_vcpu_run:
            self.in_vcpu_run = True
            self.hooks.vcpu_run_enter(vcpu=self)
        if not self.in_run_loop:
            self._in_exit = True
            self.hooks.run_loop_enter(vcpu=self)
            self._in_exit = False
            self.in_run_loop = True
        if not self.in_guest:
            self._enter()

    def _enter(self) -> None:
        self._in_exit = True
        self.hooks.vm_entry(vcpu=self)
        if self._pmi_requested:
            self._pmi_requested = False
            self._deliver_pmi()
        self._in_exit = False
        self._flush_host_work()
        self.cpu.pmu.set_guest_mode(True)
        self.in_guest = True
        if self.host.tracer is not None:
            self.host.tracer.vm_entry(self, self.cpu.now_ns())

    def _deliver_pmi(self) -> None:
        """kvm_pmu_deliver_pmi -> kvm_apic_local_deliver(APIC_LVTPC)."""
        if self.lapic.deliver(self._lvtpc_mask_on_pmi):
            self.pmis.append(Pmi(self.cpu.now_ns(), self.lapic.vector, self.lapic.is_nmi))
            if self.host.tracer is not None:
                self.host.tracer.pmi(self, self.cpu.now_ns())
            self.host.costs_ledger.charge(self.name, "pmi_inject", self.costs.pmi_inject)
            self._exit_cycles += self.costs.pmi_inject
            if self.guest_pmi_handler is not None:
                self._guest_pmi_due = True

    def _flush_host_work(self) -> None:
        c = self._exit_cycles
        if c <= 0:
            return
        self._exit_cycles = 0
        instr = c * self.costs.exit_host_ipc_x100 // 100
        counts = (c, instr, c) + _ZEROS
        was_guest = self.cpu.pmu.guest_mode
        if was_guest:
            self.cpu.pmu.set_guest_mode(False)
        self.cpu.run_host_span(self.task, counts, 0)
        if was_guest:
            self.cpu.pmu.set_guest_mode(True)

    def _exit(
        self,
        reason: str,
        fastpath: bool,
        userspace: bool,
        handler: Callable[[], Any] | None = None,
        reenter: bool = True,
    ) -> Any:
        """One VM-exit round trip (`reenter=False`: the vCPU is being scheduled out).

        `handler` emulates the exiting instruction: for slow-path exits after the run loop is
        left, as `handle_exit` runs after the PMU put (arch/x86/kvm/x86.c vcpu_enter_guest)."""
        cpu = self.cpu
        cpu.pmu.set_guest_mode(False)
        self.in_guest = False
        self._in_exit = True
        hooks = self.hooks
        self.stats.exits[reason] += 1
        tracer = self.host.tracer
        if tracer is not None:
            tracer.vm_exit(self, reason, fastpath, userspace, cpu.now_ns())
        hooks.vm_exit(vcpu=self, reason=reason, fastpath=fastpath)
        costs = self.costs
        result = None
        fault: GuestFault | None = None
        if fastpath:
            self.stats.fastpath_exits += 1
            self.host.costs_ledger.charge(self.name, "vmexit_fastpath", costs.vmexit_fastpath)
            self._exit_cycles += costs.vmexit_fastpath
            if handler is not None:
                result, fault = _emulate(handler)
            self._in_exit = False
            self._flush_host_work()
            self._in_exit = True
        else:
            self.host.costs_ledger.charge(self.name, "vmexit", costs.vmexit_full_simple)
            self._exit_cycles += costs.vmexit_full_simple
            self.in_run_loop = False
            hooks.run_loop_leave(vcpu=self)
            if handler is not None:
                result, fault = _emulate(handler)
            self._in_exit = False
            self._flush_host_work()
            self._in_exit = True
            if userspace:
                self.stats.userspace_exits += 1
                self.in_vcpu_run = False
                hooks.vcpu_run_leave(vcpu=self)
                self.host.costs_ledger.charge(self.name, "vmexit_userspace", costs.vmexit_to_userspace_extra)
                self._exit_cycles += costs.vmexit_to_userspace_extra
                self._in_exit = False
                self._flush_host_work()
                self._in_exit = True
                hooks.vcpu_run_enter(vcpu=self)
                self.in_vcpu_run = True
            if reenter:
                hooks.run_loop_enter(vcpu=self)
                self.in_run_loop = True
        self._in_exit = False
        if reenter and cpu.current_task is self.task:
            self._enter()
        if fault is not None:
            raise fault
        return result

    # ---- guest execution ------------------------------------------------------------------
    @guest_facing
    def execute(self, work: Work) -> None:
        """Run guest work in guest mode until it completes (exits, preemption, timers and
        multiplexing happen on the way). Other CPUs catch up to the same time after."""
        if not isinstance(work, Work):
            raise TypeError("execute() takes a vpmu.Work")
        self.task.queue.append(WorkCursor(work))
        cpu = self.cpu
        self._ensure_in_guest()
        cpu.run_until(1 << 62, until_idle=self.task)
        self.host.sync(cpu.now)

    @guest_facing
    def queue(self, work: Work) -> None:
        """Queue guest work that runs as time passes (`host.advance`), alongside host tasks
        and other vCPUs (scenarios use this; `execute` runs to completion at once)."""
        if not isinstance(work, Work):
            raise TypeError("queue() takes a vpmu.Work")
        self.task.queue.append(WorkCursor(work))

    def _run(self, cpu: HostCpu, budget: int) -> int:
        """Run queued guest work for up to `budget` cycles (called by the CPU scheduler).

        Each step runs to the next event of interest: a background exit, the host tick, the
        guest tick, the end of the budget, or the first counter overflow (the step is cut
        there, so the PMI and the guest's handler run at the overflow point, not a step
        later: skid is bounded by the PMI's own exit)."""
        used = 0
        queue = self.task.queue
        ep = self.exit_process
        if queue:
            self._ensure_in_guest()
        while queue and used < budget:
            if self._guest_pmi_due and not self._in_guest_handler:
                self._run_guest_pmi_handler()
            cur = queue[0]
            step = budget - used
            if ep.next_gap < step:
                step = ep.next_gap
            t = cpu.next_mux - cpu.now
            if t < step:
                step = t
            if self.guest_tick is not None and self._guest_tick_left < step:
                step = self._guest_tick_left
            if step < 1:
                step = 1
            start = cur.done
            cpl = cur.work.cpl
            counts = cur.take(step)
            cut = self._overflow_cut(cpu, counts, cpl)
            if cut:
                cur.rewind(start)
                counts = cur.take(cut)
            c = counts[0]
            self._guest_piece(cpu, counts, cpl)
            used += c
            if cur.finished:
                queue.popleft()
            ep.next_gap -= c
            if ep.next_gap <= 0:
                ff = self.fast_forward
                if ff is None:
                    reason, fast, user = ep.draw()
                    self._exit(reason, fast, user)
                else:
                    used += ff.exit_due(queue, budget - used, c)
            if cpu.now >= cpu.next_mux:
                # the host tick is an external interrupt: a slow-path exit (perf rotates in it)
                self._exit("external_interrupt", False, False, handler=cpu.timer_tick)
            if self.guest_tick is not None:
                self._guest_tick_left -= c
                if self._guest_tick_left <= 0:
                    self._guest_tick_left = self.guest_tick_cycles
                    self.guest_tick(self)
        if self._guest_pmi_due and not self._in_guest_handler:
            self._run_guest_pmi_handler()
        return used

    def _overflow_cut(self, cpu: HostCpu, counts: tuple[int, ...], cpl: int) -> int:
        """Cycles into a guest span at which the first counter that counts it wraps (0: none)."""
        cut = cpu.pmu.overflow_cut(counts, cpl, True)
        if self.direct_count:
            c2 = self.pmu.overflow_cut(counts, cpl, True)
            if c2 and (not cut or c2 < cut):
                cut = c2
        return cut

    def _guest_piece(self, cpu: HostCpu, counts: tuple[int, ...], cpl: int) -> None:
        ov = cpu.span(self.task, counts, cpl, True, self.facilities, self.facility_blocked)
        direct_pmi = False
        if self.direct_count:
            dov = self.pmu.accrue(counts, cpl, True)
            if dov:
                for pmc, _ in dov:
                    if self.pmu.raise_overflow(pmc):
                        self.request_pmi()
                        direct_pmi = True
        self.stats.guest_cycles += counts[0]
        if ((ov and cpu.handle_overflows(ov)) or direct_pmi) and self.in_guest:
            # the PMI (NMI or the mediated vector) forces a VM-exit
            self._exit("pmi", False, False)

    def _run_guest_pmi_handler(self) -> None:
        self._guest_pmi_due = False
        if self.guest_pmi_handler is None:
            return
        self._in_guest_handler = True
        try:
            self.guest_pmi_handler(self)
        finally:
            self._in_guest_handler = False
