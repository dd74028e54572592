"""Guest PMIs under mediation (v6 08/44, 09/44, 19/44; facts kvm-vpmu.md §2.3).

While a guest's PMU context is loaded the host LVTPC points at the dedicated vector 0xF5,
so every counter overflow is the guest's: perf routes it to KVM
(`kvm_handle_guest_mediated_pmi` -> KVM_REQ_PMI on the running vCPU) and the host NMI
handler ignores PMIs. That includes a PMI whose skid lands after the VM-exit but before
put: the context (and the vector) is still loaded, so it is still the guest's. The
overflow bit is already in the hardware GLOBAL_STATUS, which put saves into the guest's;
KVM_REQ_PMI injects through the virtual LAPIC's LVTPC at the next VM-entry.
"""

from __future__ import annotations

from typing import Any

from vpmu_core.api import get_logger

from vpmu_mode_mediated.state import CpuState

log = get_logger("vpmu.mode.mediated")


class PmiRouter:
    """Claims host PMIs that arrive while a guest context is loaded."""

    def __init__(self) -> None:
        self.cpus: list[CpuState] = []
        self.claimed = 0
        self.claimed_outside_guest = 0

    def attach(self, cpus: list[CpuState]) -> None:
        self.cpus = cpus

    def host_pmi(self, cpu: Any, pmc: Any, overshoot: int) -> bool | None:
        cs = self.cpus[cpu.index]
        vcpu = cs.loaded
        if vcpu is None:
            return None  # the host's: LVTPC is NMI, perf handles it
        self.claimed += 1
        if not vcpu.in_guest:
            # skid: after the VM-exit, before put (the vector still routes it to KVM)
            self.claimed_outside_guest += 1
        vcpu.request_pmi()
        return True
