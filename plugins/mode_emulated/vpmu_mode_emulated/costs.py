"""The emulated vPMU's own cost field (merged into the core's cost model at compose)."""

from __future__ import annotations

from vpmu_core.api import CostField, CostFields


class EmulatedCosts(CostFields):
    """Host cycles of what only the emulated vPMU does (scenario key `costs:`, as before)."""

    kvm_emulated_msr_access: int = CostField(400, description="KVM emulation of a vPMU MSR on top of the exit (E)")
