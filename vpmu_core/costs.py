"""The cost model: every operation the hypervisor or perf performs charges host cycles.

Defaults come from ../shared/facts/costs.md ("Suggested default cost model"), host cycles
at 3.0 GHz; the tag says how each number is known (M measured, S stated, D derived,
E estimate, C from kernel source). Two presets: `intel` (SPR/EMR) and `amd` (Zen4/Turin).
Scenarios override single fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class CostModel(BaseModel):
    """Host cycles per operation. Override any field per scenario (`costs:`)."""

    model_config = ConfigDict(extra="forbid")

    vmexit_full_simple: int = Field(
        1200, description="exit + simple handler + entry (S: Sean <1,500; M: SKX VMCALL 1,539)"
    )
    vmexit_fastpath: int = Field(600, description="fastpath exit, re-entered in the inner loop (S: 'about half')")
    vmexit_to_userspace_extra: int = Field(5000, description="extra for an exit to the VMM in userspace (E)")
    rdmsr_pmu: int = Field(80, description="RDMSR of a PMU MSR (E)")
    wrmsr_pmu: int = Field(110, description="WRMSR of a PMU MSR (D: elision commit b0b6a8d3be16)")
    rdpmc: int = Field(25, description="RDPMC (E)")
    kvm_emulated_msr_access: int = Field(400, description="KVM emulation of a vPMU MSR on top of the exit (E)")
    mediated_switch_fixed: int = Field(
        400, description="per put+load pair: GLOBAL_CTRL, status sync, LVTPC x2, perf ctx (D: calibration)"
    )
    lvtpc_switch: int = Field(50, description="one LVTPC write (part of mediated_switch_fixed) (E)")
    perf_event_create: int = Field(30000, description="perf_event_create_kernel_counter (E from D 11-17us per pair)")
    perf_event_release: int = Field(15000, description="perf_event_release_kernel (E)")
    perf_event_reprogram: int = Field(4500, description="pause + perf_event_period + enable on the same config (E)")
    perf_event_period: int = Field(1500, description="perf_event_period alone (E)")
    perf_ipi: int = Field(4500, description="event_function_call IPI to another CPU, one way (E)")
    perf_mux_rotation: int = Field(9000, description="perf_rotate_context on one CPU (E: 6-15k)")
    host_pmi_nmi: int = Field(7500, description="native perf NMI handler with one sample (C budget + M dmesg)")
    pmi_inject: int = Field(500, description="KVM_REQ_PMI + LVTPC injection at the next entry (E)")
    xsaves_per_byte: float = Field(0.5, description="XSAVES/XRSTORS of a supervisor component, per byte (E)")
    xsaves_base: int = Field(150, description="XSAVES/XRSTORS fixed cost (E)")
    guest_instruction_cycles: int = Field(1, description="guest cycles of one emulated-retired instruction (E)")
    exit_host_ipc_x100: int = Field(50, description="host instructions per cycle x100 while KVM handles an exit (E)")


PRESETS: dict[str, dict[str, int | float]] = {
    "intel": {},
    "amd": {
        "vmexit_full_simple": 2500,
        "vmexit_fastpath": 1250,
        "vmexit_to_userspace_extra": 6000,
        "rdmsr_pmu": 100,
        "wrmsr_pmu": 175,
        "mediated_switch_fixed": 1450,
    },
}


def cost_model(preset: str = "intel", overrides: dict[str, Any] | None = None) -> CostModel:
    base: dict[str, Any] = dict(PRESETS.get(preset, {}))
    base.update(overrides or {})
    return CostModel(**base)
