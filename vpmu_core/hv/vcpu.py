"""The vCPU: a host task that enters and leaves guest mode, and the guest-facing API.

Run-loop boundaries (arch/x86/kvm/x86.c): `vcpu_run` (the KVM_RUN ioctl), the inner run
loop of `vcpu_enter_guest` (fastpath exits re-enter without leaving it), and VM-entry/exit.
Every boundary calls the composed mode's hooks. Background exits come from the exit
process; guest MSR/RDPMC/CPUID accesses cause their own exits when intercepted.

Counting window (DESIGN §5): each guest WRMSR/RDMSR/RDPMC/CPUID that completes retires one
instruction at the vCPU's CPL; one that #GPs does not retire and is not counted (KVM injects
the fault and does not skip the instruction). An intercepted one is counted by KVM *after*
it took effect: the exit handler emulates it, then `kvm_skip_emulated_instruction()` ->
`kvm_pmu_instruction_retired()` runs inside the same exit, under the new GLOBAL_CTRL,
selectors, counter values and event filter (arch/x86/kvm/x86.c `kvm_emulate_wrmsr`,
`kvm_emulate_rdmsr`, `kvm_emulate_cpuid`, `kvm_emulate_rdpmc`). One the hardware executes (a
passed-through MSR, RDPMC) counts under the state before it took effect.
"""

from __future__ import annotations

import errno
import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from operator import add as _add
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from vpmu_core.engine.exits import FASTPATH_REASONS, ExitProcess
from vpmu_core.engine.task import Task
from vpmu_core.errors import GuestFault, PerfError, VmDestroyedError, gp
from vpmu_core.events import N_KINDS, Work, WorkCursor
from vpmu_core.hv.lapic import X2APIC_LVTPC, LvtPc
from vpmu_core.logs import get_logger
from vpmu_core.seeds import derive_seed

if TYPE_CHECKING:
    from vpmu_core.engine.cpu import HostCpu
    from vpmu_core.hv.vm import VM

log = get_logger("vpmu.hv")

#: one retired instruction of one cycle (the counting-window unit)
ONE_INSTRUCTION = (1, 1, 1) + (0,) * (N_KINDS - 3)
_ZEROS = (0,) * (N_KINDS - 3)
#: an instruction KVM emulates: it retires in the guest but takes no guest cycles
EMULATED_INSTRUCTION = (0, 1) + (0,) * (N_KINDS - 2)

#: Legacy PMU MSRs that KVM's common code answers when the vendor vPMU does not claim them
#: (arch/x86/kvm/x86.c kvm_set_msr_common/kvm_get_msr_common: MSR_K7_EVNTSEL0..3,
#: MSR_K7_PERFCTR0..3, MSR_P6_PERFCTR0..1, MSR_P6_EVNTSEL0..1 -> if !kvm_pmu_is_valid_msr(),
#: reads return 0 and writes are dropped, no #GP). Selftest pmu_counters_test relies on it:
#: "KVM drops writes to MSR_P6_PERFCTR[0|1] if the counters are unsupported".
KVM_COMMON_PMU_MSRS = frozenset((0xC1, 0xC2, 0x186, 0x187, *range(0xC001_0000, 0xC001_0008)))


_P = ParamSpec("_P")
_R = TypeVar("_R")


def guest_facing(fn: Callable[Concatenate[VCpu, _P], _R]) -> Callable[Concatenate[VCpu, _P], _R]:
    """A call of the vCPU's guest-facing API (DESIGN §5): on a destroyed VM it raises
    `VmDestroyedError` at once, before anything runs (kvm_vcpu_ioctl: -EIO once
    `kvm->vm_dead`), instead of waiting for a task that is on no run queue."""

    @functools.wraps(fn)
    def call(self: VCpu, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self.vm.destroyed:
            raise VmDestroyedError(f"{self.name}.{fn.__name__}()")
        return fn(self, *args, **kwargs)

    return call


@dataclass(frozen=True)
class Pmi:
    """A virtual PMI delivered through the vLAPIC LVTPC."""

    time_ns: int
    vector: int
    nmi: bool


class VcpuStats:
    """`exits`: reason -> count. `overhead_cycles`: operation -> host cycles charged."""

    def __init__(self, vcpu: VCpu) -> None:
        self.exits: Counter[str] = Counter()
        self._vcpu = vcpu
        self.guest_cycles = 0
        self.fastpath_exits = 0
        self.userspace_exits = 0

    @property
    def overhead_cycles(self) -> dict[str, int]:
        return dict(self._vcpu.host.costs_ledger.cycles[self._vcpu.name])

    @property
    def calls(self) -> dict[str, int]:
        return dict(self._vcpu.host.costs_ledger.calls[self._vcpu.name])

    @property
    def total_exits(self) -> int:
        return sum(self.exits.values())


class VcpuTask(Task):
    """The vCPU thread. Its preempt notifiers are KVM's (kvm_preempt_ops: kvm_sched_in ->
    kvm_arch_vcpu_load, kvm_sched_out -> kvm_arch_vcpu_put): the engine's scheduler calls
    them and knows nothing else of VMs."""

    kind = "vcpu"
    leaves_cpu_when_idle = True

    def __init__(self, vcpu: VCpu, pid: int, cpu: int) -> None:
        super().__init__(vcpu.host, pid, vcpu.name, cpu)
        self.vcpu = vcpu
        self.owner = vcpu.name
        self._truth = vcpu.host.truth.slots(self.owner)

    def run(self, cpu: HostCpu, budget: int) -> int:
        return self.vcpu._run(cpu, budget)

    def sched_in(self, cpu: HostCpu) -> None:
        self.vcpu._sched_in(cpu)

    def sched_out(self, cpu: HostCpu) -> None:
        self.vcpu._sched_out(cpu)


class VCpu:
    """See module docstring and DESIGN §5."""

    def __init__(self, vm: VM, index: int, cpu: int) -> None:
        host = vm.host
        self.vm = vm
        self.host = host
        self.index = index
        self.name = f"{vm.name}/vcpu{index}"
        self.hooks = host.hooks
        self.costs = host.costs
        self.task = VcpuTask(self, host._alloc_pid(), cpu)
        self.pmu = host.model.make_pmu(vm.pmu_config)
        self.facilities: dict[str, Any] = {}
        for name, fac in host.facilities.items():
            if vm.facility_enabled(name):
                self.facilities[name] = fac.make_state(guest=True)
        self.cpuid_table = host.model.cpuid_table(vm.pmu_config)
        for name, fac in host.facilities.items():
            if name in self.facilities:
                fac.adjust_cpuid(self.cpuid_table, guest=True)
        from vpmu_core.hv.xsave import Ia32Xss

        #: IA32_XSS, present when the guest CPUID advertises XSAVES (x86.c kvm_set_msr_common)
        self.xss = Ia32Xss.for_cpuid(self.cpuid_table)
        self.lapic = LvtPc()
        #: KVM masks the LVTPC on PMI delivery only for Intel-compatible guests (lapic.py)
        self._lvtpc_mask_on_pmi = bool(getattr(host.model, "lvtpc_masked_on_pmi", True))
        self.cpl = 0
        #: CR4.PCE: RDPMC allowed at CPL > 0 (SDM Vol. 2B RDPMC)
        self.cr4_pce = False
        self.pmis: list[Pmi] = []
        self.stats = VcpuStats(self)
        self.exit_process = ExitProcess(
            vm.exit_profile,
            host.freq_hz,
            derive_seed(host.seed, vm.name, index),
            getattr(host.model, "fastpath_exit_reasons", FASTPATH_REASONS),
        )
        #: per-vCPU state of the mode (KVM's struct kvm_pmu), set by the mode's vcpu_create
        self.mode_state: Any = None
        #: facilities the mode has stopped from recording (e.g. vLBR event not ACTIVE)
        self.facility_blocked: set[str] = set()
        #: the reference mode counts guest spans straight into `self.pmu`
        self.direct_count = False
        self.in_vcpu_run = False
        self.in_run_loop = False
        self.in_guest = False
        self.loaded_on: int | None = None
        self._pmi_requested = False
        self._exit_cycles = 0
        self._in_exit = False
        #: the guest kernel's PMI handler (guest perf installs it)
        self.guest_pmi_handler: Callable[[VCpu], None] | None = None
        self._guest_pmi_due = False
        self._in_guest_handler = False
        #: guest timer tick for guest perf multiplexing (guest cycles)
        self.guest_tick_cycles = host.ns_to_cycles(vm.guest_mux_interval_ns)
        self._guest_tick_left = self.guest_tick_cycles
        self.guest_tick: Callable[[VCpu], None] | None = None
        host._add_task(self.task)
        self.hooks.guest_cpuid(vcpu=self, table=self.cpuid_table)

    def __repr__(self) -> str:
        return f"VCpu({self.name}, cpu={self.task.cpu})"

    # ---- small helpers ------------------------------------------------------------------
    @property
    def cpu(self) -> HostCpu:
        return self.host.cpus[self.task.cpu]

    def now_ns(self) -> int:
        return self.cpu.now_ns()

    def charge(self, op: str, cycles: int, n: int = 1) -> None:
        """Charge host cycles for an operation; they become host-mode work of this vCPU's
        task at the end of the current exit (or right away outside one)."""
        self.host.costs_ledger.charge(self.name, op, cycles, n)
        self._exit_cycles += cycles
        if not self._in_exit:
            self._flush_host_work()

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
                try:
                    result = handler()
                except GuestFault as f:
                    fault = f
            self._in_exit = False
            self._flush_host_work()
            self._in_exit = True
        else:
            self.host.costs_ledger.charge(self.name, "vmexit", costs.vmexit_full_simple)
            self._exit_cycles += costs.vmexit_full_simple
            self.in_run_loop = False
            hooks.run_loop_leave(vcpu=self)
            if handler is not None:
                try:
                    result = handler()
                except GuestFault as f:
                    fault = f
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
                reason, fast, user = ep.draw()
                self._exit(reason, fast, user)
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
        pmu = cpu.pmu
        ov = pmu.accrue(counts, cpl, True)
        if self.facilities:
            for name, f in self.facilities.items():
                if f.active and name not in self.facility_blocked:
                    f.record(counts, cpl, True, self.task.position)
        direct_pmi = False
        if self.direct_count:
            dov = self.pmu.accrue(counts, cpl, True)
            if dov:
                for pmc, _ in dov:
                    if self.pmu.raise_overflow(pmc):
                        self.request_pmi()
                        direct_pmi = True
        self.task.account(counts, cpl, True)
        row = self.host.cpu_truth[cpu.index][2 if cpl == 0 else 3]
        row[:] = map(_add, row, counts)
        cpu.now += counts[0]
        self.stats.guest_cycles += counts[0]
        if ((ov and cpu.handle_overflows(ov)) or direct_pmi) and self.in_guest:
            # the PMI (NMI or the mediated vector) forces a VM-exit
            self._exit("pmi", False, False)

    def _retire_native(self, plan: Any) -> None:
        """A non-intercepted instruction retires in guest mode under `plan` (old state)."""
        cpu = self.cpu
        ov = cpu.pmu.accrue_plan(plan, ONE_INSTRUCTION, self.cpl)
        self.task.account(ONE_INSTRUCTION, self.cpl, True)
        cpu.now += 1
        if ov:
            cpu.handle_overflows(ov)

    def _retire_emulated(self) -> None:
        """An intercepted instruction completed: `kvm_skip_emulated_instruction()` ->
        `kvm_pmu_instruction_retired()` (the mode's hook, inside the exit, after the
        instruction's effect), and the ground truth (one guest instruction; its time is the
        exit's host time)."""
        self.hooks.instruction_retired(vcpu=self)
        self.task.account(EMULATED_INSTRUCTION, self.cpl, True)
        row = self.host.cpu_truth[self.task.cpu][2 if self.cpl == 0 else 3]
        row[1] += 1

    def _emulated(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """The exit handler of an instruction KVM emulates: its effect, then, only if it did
        not fault, the retirement (`_retire_emulated`). A GuestFault propagates: KVM injects
        the #GP without skipping the instruction, so nothing counts it."""

        def handler() -> Any:
            result = fn()
            self._retire_emulated()
            return result

        return handler

    def _run_guest_pmi_handler(self) -> None:
        self._guest_pmi_due = False
        if self.guest_pmi_handler is None:
            return
        self._in_guest_handler = True
        try:
            self.guest_pmi_handler(self)
        finally:
            self._in_guest_handler = False

    # ---- guest instructions -----------------------------------------------------------------
    def _owner_of(self, msr: int) -> Any:
        if msr == X2APIC_LVTPC:
            return self.lapic
        if self.pmu.has_msr(msr):
            return self.pmu
        for f in self.facilities.values():
            if f.has_msr(msr):
                return f
        if self.xss is not None and self.xss.has_msr(msr):
            return self.xss
        return None

    def _hw_target(self, msr: int) -> Any:
        """Where a passed-through access lands. PMU registers: the physical PMU (a mode that
        passes them through has loaded the guest's values). Facility registers (LBR): the
        vCPU's facility state, which is what records the guest's branches while the guest
        owns the facility (the hardware holds the guest's records then)."""
        cpu = self.cpu
        if cpu.pmu.has_msr(msr):
            return cpu.pmu
        for f in self.facilities.values():
            if f.has_msr(msr):
                return f
        return cpu.pmu

    @guest_facing
    def wrmsr(self, msr: int, value: int) -> None:
        """Guest WRMSR. Raises `GuestFault` (vector 13) where hardware/KVM gives #GP."""
        if self.cpl != 0:
            raise gp("WRMSR at CPL > 0")  # SDM Vol. 2B WRMSR: #GP(0) if CPL != 0, before any exit
        if not isinstance(value, int) or value < 0 or value >> 64:
            raise gp("WRMSR value must fit EDX:EAX")
        self._ensure_in_guest()
        hooks = self.hooks
        owner = self._owner_of(msr)
        if owner is None:
            # KVM: unhandled MSR -> #GP injected after the exit (kvm_set_msr_common), except
            # the legacy PMU MSRs it drops
            if msr in KVM_COMMON_PMU_MSRS:
                self._exit("msr_write", False, False, handler=self._emulated(lambda: None))
                return
            self._exit("msr_write", False, False, handler=_raise_gp(msr))
            return
        if owner is not self.lapic and hooks.msr_intercepted(vcpu=self, msr=msr, write=True) is False:
            plan = self.cpu.pmu.plan(True)
            target = self._hw_target(msr)
            target.wrmsr(msr, value)
            self._retire_native(plan)
            return

        def emulate() -> None:
            if owner is self.lapic:
                self.lapic.write(value)
            elif not hooks.guest_wrmsr(vcpu=self, msr=msr, value=value):
                owner.wrmsr(msr, value)

        self._exit("msr_write", False, False, handler=self._emulated(emulate))

    @guest_facing
    def rdmsr(self, msr: int) -> int:
        """Guest RDMSR. Raises `GuestFault` (vector 13) where hardware/KVM gives #GP."""
        if self.cpl != 0:
            raise gp("RDMSR at CPL > 0")
        self._ensure_in_guest()
        hooks = self.hooks
        owner = self._owner_of(msr)
        if owner is None:
            if msr in KVM_COMMON_PMU_MSRS:  # reads 0 (kvm_get_msr_common)
                self._exit("msr_read", False, False, handler=self._emulated(lambda: 0))
                return 0
            self._exit("msr_read", False, False, handler=_raise_gp(msr))
            return 0
        if owner is not self.lapic and hooks.msr_intercepted(vcpu=self, msr=msr, write=False) is False:
            plan = self.cpu.pmu.plan(True)
            value = self._hw_target(msr).rdmsr(msr)
            self._retire_native(plan)
            return value

        def emulate() -> int:
            if owner is self.lapic:
                return self.lapic.value
            v = hooks.guest_rdmsr(vcpu=self, msr=msr)
            return owner.rdmsr(msr) if v is None else v

        return int(self._exit("msr_read", False, False, handler=self._emulated(emulate)))

    @guest_facing
    def rdpmc(self, ecx: int) -> int:
        """Guest RDPMC. #GP at CPL > 0 without CR4.PCE, for bad indexes per the vendor."""
        if self.cpl != 0 and not self.cr4_pce:
            raise gp("RDPMC at CPL > 0 with CR4.PCE = 0")  # SDM Vol. 2B RDPMC
        self._ensure_in_guest()
        hooks = self.hooks
        if hooks.rdpmc_intercepted(vcpu=self) is False:
            plan = self.cpu.pmu.plan(True)
            value = self.cpu.pmu.rdpmc(ecx)
            self._retire_native(plan)
            return value

        def emulate() -> int:
            v = hooks.guest_rdpmc(vcpu=self, ecx=ecx)
            return self.pmu.rdpmc(ecx) if v is None else v

        return int(self._exit("rdpmc", False, False, handler=self._emulated(emulate)))

    @guest_facing
    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        """Guest CPUID (always exits on VMX and SVM)."""
        self._ensure_in_guest()
        regs: tuple[int, int, int, int] = self._exit(
            "cpuid", False, False, handler=self._emulated(lambda: self.cpuid_table.get(leaf, subleaf))
        )
        return regs

    # ---- host-initiated MSR access (KVM_GET_MSRS / KVM_SET_MSRS) --------------------------------
    def _host_owner(self, msr: int, op: str) -> Any:
        owner = self._owner_of(msr)
        if owner is None and msr not in KVM_COMMON_PMU_MSRS:
            # the ioctl stops at an MSR KVM does not know: it processed 0 of 1 MSRs
            raise PerfError(errno.EINVAL, f"{op}: MSR {msr:#x} is not supported for this vCPU")
        return owner

    @guest_facing
    def host_get_msr(self, msr: int) -> int:
        """KVM_GET_MSRS of one MSR (a VMM, migration): `msr_info->host_initiated` is true, no
        VM-exit, no guest instruction. The mode first brings the saved state up to date (a
        mediated vCPU whose context is loaded: the live hardware values). Raises
        `PerfError(EINVAL)` for an MSR KVM does not handle for this vCPU; the legacy PMU MSRs
        KVM's common code answers read 0 (kvm_get_msr_common)."""
        owner = self._host_owner(msr, "KVM_GET_MSRS")
        if owner is None:
            return 0
        if owner is self.lapic:
            return self.lapic.value
        self.hooks.vcpu_save_state(vcpu=self, state={})
        try:
            return int(self._host_access(owner, lambda: owner.rdmsr(msr)))
        except GuestFault as e:
            raise PerfError(errno.EINVAL, f"KVM_GET_MSRS: MSR {msr:#x}: {e}") from None

    @guest_facing
    def host_set_msr(self, msr: int, value: int) -> None:
        """KVM_SET_MSRS of one MSR: the vendor's `host_initiated` rules apply (e.g. Intel
        GLOBAL_STATUS is writable by the host only, PERF_CAPABILITIES may only be restored to
        its value, AMD GLOBAL_STATUS_CLR/SET ignore host writes, legacy PMCx take the value
        whole), then the mode rebuilds its backing as after a restore (kvm_pmu_set_msr ->
        reprogram; mediated: the loaded hardware is synced). A value KVM rejects raises
        `PerfError(EINVAL)` (the ioctl processed 0 MSRs); nothing counts as a guest
        instruction or exits."""
        if not isinstance(value, int) or value < 0 or value >> 64:
            raise PerfError(errno.EINVAL, "KVM_SET_MSRS: value must fit 64 bits")
        owner = self._host_owner(msr, "KVM_SET_MSRS")
        if owner is None:
            return  # dropped (kvm_set_msr_common)
        if owner is self.lapic:
            try:
                self.lapic.write(value)
            except GuestFault as e:
                raise PerfError(errno.EINVAL, f"KVM_SET_MSRS: MSR {msr:#x}: {e}") from None
            return
        self.hooks.vcpu_save_state(vcpu=self, state={})
        try:
            self._host_access(owner, lambda: owner.wrmsr(msr, value))
        except GuestFault as e:
            raise PerfError(errno.EINVAL, f"KVM_SET_MSRS: MSR {msr:#x} = {value:#x}: {e}") from None
        finally:
            self.hooks.vcpu_restore_state(vcpu=self, state={})

    @staticmethod
    def _host_access(owner: Any, fn: Callable[[], Any]) -> Any:
        """Run `fn` with the owner's `host_initiated` flag set (vendor PMUs implement it)."""
        if not hasattr(owner, "host_initiated"):
            return fn()
        owner.host_initiated = True
        try:
            return fn()
        finally:
            owner.host_initiated = False

    # ---- XSAVES / migration --------------------------------------------------------------------
    def _rfbm(self, mask: int, op: str) -> int:
        """The requested-feature bitmap of XSAVES/XRSTORS: EDX:EAX & (XCR0 | IA32_XSS) (SDM
        Vol. 1 13.2, 13.11-13.12). The PMU components are supervisor state (never in XCR0),
        so only IA32_XSS selects them. #UD without XSAVES in the guest CPUID."""
        if self.xss is None:
            raise GuestFault(6, f"{op}: CPUID.(0DH,1):EAX.XSAVES = 0")
        return mask & self.xss.value

    @guest_facing
    def xsaves(self, mask: int) -> Any:
        """Guest XSAVES of the PMU components in `mask` (e.g. 1 << 15 for Arch LBR), as far as
        IA32_XSS enables them (RFBM = mask & (XCR0 | IA32_XSS))."""
        from vpmu_core.hv.xsave import XsaveArea

        if mask < 0 or mask >> 64:
            raise gp("XSAVES: bad mask")
        self._ensure_in_guest()
        rfbm = self._rfbm(mask, "XSAVES")
        area = self.hooks.guest_xsaves(vcpu=self, mask=rfbm)
        if area is None:
            area = XsaveArea.save(self.facilities.values(), rfbm)
        self._retire_native(self.cpu.pmu.plan(True))
        return area

    @guest_facing
    def xrstors(self, area: Any, mask: int) -> None:
        """Guest XRSTORS of the PMU components in `mask`."""
        from vpmu_core.hv.xsave import XsaveArea

        if not isinstance(area, XsaveArea) or mask < 0 or mask >> 64:
            raise gp("XRSTORS: not an XSAVE area of this vCPU or bad mask")  # SDM Vol. 1 13.12
        self._ensure_in_guest()
        rfbm = self._rfbm(mask, "XRSTORS")
        if self.hooks.guest_xrstors(vcpu=self, area=area, mask=rfbm) is None:
            area.restore(self.facilities.values(), rfbm)
        self._retire_native(self.cpu.pmu.plan(True))

    @guest_facing
    def save_state(self) -> dict[str, Any]:
        """Migration: the vCPU's PMU, facility and LVTPC state (KVM_GET_MSRS + XSAVE), as
        plain JSON-safe data of schema version 1 (vpmu_core/hv/state.py,
        docs/migration-state.md). The mode syncs live counts into `vcpu.pmu` first."""
        from vpmu_core.hv import state as vstate

        state: dict[str, Any] = {
            "schema": vstate.STATE_SCHEMA,
            "version": vstate.STATE_VERSION,
            "vendor": self.pmu.vendor,
            "cpu": self.host.composition.get("cpu", ""),
            "mode": self.host.mode_name,
            "cpl": self.cpl,
            "cr4_pce": bool(self.cr4_pce),
            "lapic_lvtpc": self.lapic.value,
            "mode_state": {},
        }
        self.hooks.vcpu_save_state(vcpu=self, state=state)
        regs = state.get("pmu")
        if regs is None:
            regs = self.pmu.snapshot()
        state["pmu"] = {k if isinstance(k, str) else vstate.msr_key(k): v for k, v in regs.items()}
        state["facilities"] = {n: f.snapshot() for n, f in sorted(self.facilities.items())}
        return state

    @guest_facing
    def restore_state(self, state: dict[str, Any]) -> None:
        """Migration target: KVM_SET_MSRS (host-initiated writes) of a `save_state()` result,
        then the mode rebuilds its backing. All or nothing: a state this vCPU cannot load
        exactly raises `StateError` and changes nothing (see vpmu_core/hv/state.py).

        KVM_SET_MSRS runs outside KVM_RUN: a vCPU that is in guest mode first exits to the
        VMM (the VMM's signal kick, KVM_EXIT_INTR), so the KVM_REQ_PMU the restore raises is
        serviced at the next VM-entry, before any guest work (vcpu_enter_guest ->
        kvm_pmu_handle_event)."""
        from vpmu_core.errors import ConfigError, StateError
        from vpmu_core.hv import state as vstate

        msrs = list(self.pmu.state_msrs())
        st = vstate.parse(state, vendor=self.pmu.vendor, msrs=msrs, facilities=list(self.facilities))
        if self.in_guest:
            self._exit("external_interrupt", False, True, reenter=False)
        old_regs = self.pmu.snapshot()
        old_facs = {n: f.snapshot() for n, f in self.facilities.items()}
        try:
            self._load_registers(st["pmu"])
            for n, fs in sorted(st["facilities"].items()):
                try:
                    self.facilities[n].restore(fs)
                except ConfigError as e:
                    raise StateError(f"state.facilities.{n}", str(e)) from None
        except StateError:
            self._load_registers(old_regs, strict=False)
            for n, fs in old_facs.items():
                self.facilities[n].restore(fs)
            raise
        self.lapic.value = st["lapic_lvtpc"]
        self.cpl = st["cpl"]
        self.cr4_pce = st["cr4_pce"]
        self.hooks.vcpu_restore_state(vcpu=self, state=state)

    def _load_registers(self, regs: dict[int, int], strict: bool = True) -> None:
        """Host-initiated writes of `regs` in order; a write the vendor model refuses (#GP
        even for the host: KVM_SET_MSRS stops there) raises StateError when `strict`."""
        from vpmu_core.errors import StateError
        from vpmu_core.hv.state import msr_key

        pmu = self.pmu
        pmu.host_initiated = True
        try:
            for msr, value in regs.items():
                try:
                    pmu.wrmsr(msr, value)
                except GuestFault as f:
                    if strict:
                        raise StateError(f"state.pmu.{msr_key(msr)}", f"{value:#x} refused: {f.reason}") from None
        finally:
            pmu.host_initiated = False


def _raise_gp(msr: int) -> Callable[[], None]:
    def f() -> None:
        raise gp(f"MSR {msr:#x} is not emulated")

    return f
