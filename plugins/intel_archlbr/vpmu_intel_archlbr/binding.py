"""How a facility object ties its states to the engine: hypervisor hooks it implements.

Why: `Facility.make_state(guest)` gets no vCPU, host seed or PMU, but freeze-on-PMI needs the
PMU the LBR sits next to and the branch stream must follow the composition's seed. The core
registers each facility object with the composition's plugin manager, so the object
implements `vpmu_vm_create` / `vpmu_vcpu_create` to bind states to PMUs and seeds (and the
Arch LBR facility also applies the guest's configured depth there). Nothing else is hooked:
vCPU save/restore already carries `snapshot()`/`restore()` of every facility state.
"""

from __future__ import annotations

from typing import Any

from vpmu_core.api import derive_seed, hookimpl


def hash_seed(*parts: object) -> int:
    """A stable default stream seed (replaced at bind time by one derived from the host seed)."""
    return derive_seed(0, *parts)


class FacilityHooks:
    """Mixin for facility objects: bind host-CPU and vCPU states when VMs and vCPUs appear."""

    name: str = ""

    def _bind_host(self, host: Any) -> None:
        for cpu in host.cpus:
            st = cpu.facilities.get(self.name)
            if st is not None and st.pmu is None:
                st.bind(cpu.pmu, derive_seed(host.seed, "cpu", cpu.index, self.name))

    def configure_guest(self, vcpu: Any, state: Any) -> None:
        """Apply per-VM options (GuestPmuConfig.facility_options[name]); none by default."""

    @hookimpl
    def vpmu_vm_create(self, vm: Any) -> None:
        """Host CPU states get their PMU and a seed from the host's seed."""
        self._bind_host(vm.host)

    @hookimpl
    def vpmu_vcpu_create(self, vcpu: Any) -> None:
        """The vCPU's state follows the vCPU's PMU (freeze on PMI) and a per-vCPU seed."""
        st = vcpu.facilities.get(self.name)
        if st is None:
            return
        st.bind(vcpu.pmu, derive_seed(vcpu.host.seed, vcpu.name, self.name))
        self.configure_guest(vcpu, st)
