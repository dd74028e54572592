"""Instruction emulation (arch/x86/kvm/x86.c `kvm_set_msr_common` / `kvm_get_msr_common`).

Guest WRMSR/RDMSR/RDPMC/CPUID and XSAVES/XRSTORS, the host-initiated KVM_GET_MSRS /
KVM_SET_MSRS of one MSR, and the retire paths.

Counting window (DESIGN §5): each guest WRMSR/RDMSR/RDPMC/CPUID that completes retires one
instruction at the vCPU's CPL; one that #GPs does not retire and is not counted (KVM injects
the fault and does not skip the instruction). An intercepted one is counted by KVM *after*
it took effect: the exit handler emulates it, then `kvm_skip_emulated_instruction()` ->
`kvm_pmu_instruction_retired()` runs inside the same exit, under the new GLOBAL_CTRL,
selectors, counter values and event filter (arch/x86/kvm/x86.c `kvm_emulate_wrmsr`,
`kvm_emulate_rdmsr`, `kvm_emulate_cpuid`, `kvm_emulate_rdpmc`). One the hardware executes (a
passed-through MSR, RDPMC) counts under the state before it took effect.

`Emulation` is a mixin of `VCpu` (hv/vcpu.py); its exits go through the run loop
(hv/run_loop.py).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vpmu_core.errors import GuestFault, PerfError, gp
from vpmu_core.events import EMULATED_INSTRUCTION, N_KINDS, ONE_INSTRUCTION
from vpmu_core.hv.guest_facing import guest_facing
from vpmu_core.hv.kvm_caps import KVM_COMMON_PMU_MSRS
from vpmu_core.hv.lapic import X2APIC_LVTPC
from vpmu_core.ledgers.truth import slot as truth_slot

__all__ = ["EMULATED_INSTRUCTION", "KVM_COMMON_PMU_MSRS", "ONE_INSTRUCTION", "Emulation"]

if TYPE_CHECKING:
    from vpmu_core.engine.cpu import HostCpu
    from vpmu_core.host import Host
    from vpmu_core.hv.lapic import LvtPc
    from vpmu_core.hv.vcpu import VcpuTask
    from vpmu_core.hv.vm import VM
    from vpmu_core.hv.xsave import Ia32Xss


_ZEROS = (0,) * (N_KINDS - 3)


class Emulation:
    """The guest's PMU-relevant instructions and the VMM's MSR ioctls."""

    if TYPE_CHECKING:
        # the vCPU state emulation reads and writes (built by VCpu.__init__)
        vm: VM
        host: Host
        name: str
        hooks: Any
        task: VcpuTask
        pmu: Any
        facilities: dict[str, Any]
        xss: Ia32Xss | None
        lapic: LvtPc
        cpuid_table: Any
        cpl: int
        cr4_pce: bool

        @property
        def cpu(self) -> HostCpu: ...

        # the run loop's (hv/run_loop.py)
        def _ensure_in_guest(self) -> None: ...

        def _exit(
            self,
            reason: str,
            fastpath: bool,
            userspace: bool,
            handler: Callable[[], Any] | None = None,
            reenter: bool = True,
        ) -> Any: ...

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
        row = self.host.cpu_truth[self.task.cpu][truth_slot(self.cpl, True)]
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


def _raise_gp(msr: int) -> Callable[[], None]:
    def f() -> None:
        raise gp(f"MSR {msr:#x} is not emulated")

    return f
