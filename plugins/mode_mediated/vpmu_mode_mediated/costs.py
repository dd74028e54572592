"""The mediated vPMU's own cost fields and their AMD numbers (merged into the core's cost
model at compose; ../shared/facts/costs.md)."""

from __future__ import annotations

from vpmu_core.api import CostField, CostFields


class MediatedCosts(CostFields):
    """Host cycles of the mediated PMU context switch (scenario key `costs:`, as before)."""

    mediated_switch_fixed: int = CostField(
        400, description="per put+load pair: GLOBAL_CTRL, status sync, LVTPC x2, perf ctx (D: calibration)"
    )
    lvtpc_switch: int = CostField(50, description="one LVTPC write (part of mediated_switch_fixed) (E)")
    mediated_global_ctrl_vmread: int = CostField(
        20,
        description="VMREAD of the guest PERF_GLOBAL_CTRL field after every VM-exit on VMX (S: commit "
        "d3ba32d1ff2a, caching it would shave ~15-20 cycles per exit; the upper bound)",
    )


#: the `amd` preset's number for the SVM switch (WRMSR GLOBAL_CTL at load and put)
COST_PRESETS: dict[str, dict[str, int | float]] = {"amd": {"mediated_switch_fixed": 1450}}
