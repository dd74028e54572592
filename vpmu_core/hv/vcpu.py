"""The vCPU: a host task that enters and leaves guest mode, and the guest-facing API.

One concept per module, along the kernel's seams (DESIGN §5 is the contract of `VCpu`):

- this module: the vCPU object and its state (construction, stats, the vCPU thread's preempt
  notifiers, save/restore glue for migration);
- hv/run_loop.py: the run loop (x86.c `vcpu_run` / `vcpu_enter_guest`, VM-entry/exit, PMI
  delivery, the guest's PMI handler);
- hv/emulate.py: instruction emulation (`kvm_set_msr_common` / `kvm_get_msr_common`: guest
  WRMSR/RDMSR/RDPMC/CPUID, XSAVES/XRSTORS, KVM_GET/SET_MSRS, the retire paths and the
  counting window);
- hv/guest_facing.py: the guest-facing API boundary (`guest_facing`).

The names plugins import from here (`VCpu`, `Pmi`, `VcpuStats`, `VcpuTask`, `guest_facing`,
`ONE_INSTRUCTION`, `EMULATED_INSTRUCTION`, `KVM_COMMON_PMU_MSRS`) stay importable from here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vpmu_core.engine.exits import FASTPATH_REASONS, ExitProcess
from vpmu_core.engine.task import Task
from vpmu_core.errors import GuestFault
from vpmu_core.hv.emulate import EMULATED_INSTRUCTION, KVM_COMMON_PMU_MSRS, ONE_INSTRUCTION, Emulation
from vpmu_core.hv.fast_forward import FastForward, worth_learning
from vpmu_core.hv.guest_facing import guest_facing
from vpmu_core.hv.lapic import LvtPc
from vpmu_core.hv.run_loop import Pmi, RunLoop
from vpmu_core.hv.snapshot import VcpuSnapshot
from vpmu_core.logs import get_logger
from vpmu_core.seeds import derive_seed

if TYPE_CHECKING:
    from vpmu_core.engine.cpu import HostCpu
    from vpmu_core.hv.vm import VM

__all__ = [
    "EMULATED_INSTRUCTION",
    "KVM_COMMON_PMU_MSRS",
    "ONE_INSTRUCTION",
    "Pmi",
    "VCpu",
    "VcpuStats",
    "VcpuTask",
    "guest_facing",
]

log = get_logger("vpmu.hv")


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


class VCpu(RunLoop, Emulation):
    """See the module docstring and DESIGN §5: the state is built here; the run loop
    (`RunLoop`) and the instruction emulation (`Emulation`) are its mixins."""

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
        #: the exact fast-forward of background exits (None: every exit one by one)
        self.fast_forward: FastForward | None = None
        if host.fast_forward and self.hooks.has("vpmu_fast_forward_state") and worth_learning(self):
            self.fast_forward = FastForward(self)
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

    def snapshot(self) -> VcpuSnapshot:
        """The vCPU's figures now, as a plain record (the report's source)."""
        st = self.stats
        vals = self.hooks.guest_counter_values(vcpu=self)
        if vals is None:
            vals = {f"{p.idx:#x}": self.pmu.read_counter(p) for p in self.pmu.pmcs}
        return VcpuSnapshot(
            name=self.name,
            exits=dict(sorted(st.exits.items())),
            total_exits=st.total_exits,
            fastpath_exits=st.fastpath_exits,
            userspace_exits=st.userspace_exits,
            guest_cycles=st.guest_cycles,
            pmis=len(self.pmis),
            guest_counters=vals,
            facilities={n: f.summary() for n, f in sorted(self.facilities.items()) if hasattr(f, "summary")},
        )

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
