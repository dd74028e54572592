"""The guest's view of PERF_GLOBAL_CTRL in VMX non-root mode, where it is passed through.

On VMX the guest's GLOBAL_CTRL lives in the VMCS guest-state field: VM-entry loads it into
the MSR, VM-exit saves it back and loads the host value (0 while mediated), v6 27/44 and
commit d3ba32d1ff2a. A passthrough RDMSR/WRMSR in guest mode therefore touches the guest's
value, not the host's. The physical PMU model keeps one register plus the VM-entry load
(`entry_loads`), so the mode gives the physical GLOBAL_CTRL MSR a guest-mode view: while a
mediated guest is in guest mode on that CPU, the register reads and writes the guest's
value (kept in `vcpu.pmu`, with the vendor's guest semantics for reserved bits) and the
VM-entry load follows it at once. Host-mode accesses are untouched.

SVM needs none of this: GLOBAL_CTL is written with the guest value at load and the
selectors carry GuestOnly, so the guest's passthrough accesses hit the real register.
"""

from __future__ import annotations

from typing import Any

from vpmu_mode_mediated.state import CpuState
from vpmu_mode_mediated.switch import Switcher


def install_guest_view(cpu: Any, cs: CpuState, switcher: Switcher) -> None:
    """Wrap the physical GLOBAL_CTRL MSR of `cpu` (`PmuBase.override_msr`)."""
    pmu = cpu.pmu
    msr = pmu.global_msrs()["ctrl"]
    reader, writer = pmu.override_msr(msr)
    if writer is None:
        return  # a read-only global control cannot be written by a guest either

    def guest_vcpu() -> Any:
        v = cs.loaded
        if v is None or not pmu.guest_mode or not v.mode_state.global_passthrough:
            return None
        return v

    def read() -> int:
        v = guest_vcpu()
        if v is None:
            return reader()
        return switcher.guest_ctrl(v)

    def write(value: int) -> None:
        v = guest_vcpu()
        if v is None:
            writer(value)
            return
        v.pmu.wrmsr(v.mode_state.guest_globals["ctrl"], value)
        switcher.apply_guest_ctrl(v)

    pmu.override_msr(msr, read, write)
