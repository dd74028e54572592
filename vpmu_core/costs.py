"""The cost model: every operation the hypervisor or perf performs charges host cycles.

The core owns the fields of what every mode does (VM-exits and entries, PMI injection, the
PMU instructions RDMSR/WRMSR/RDPMC/XSAVES, host perf's own operations); a mode, facility or
vendor plugin declares the fields of its own design and its presets on its spec
(`ModeSpec(costs=MyCosts, cost_presets={...})`), and `compose()` merges them into one model
(`compose_cost_model`). Presets are named by the plugins (intel_arch: `intel`, the baseline
the defaults are; amd_perfmon: `amd`); an unknown one is an error naming the known ones.

Defaults come from ../shared/facts/costs.md ("Suggested default cost model"), host cycles
at 3.0 GHz (SPR/EMR); the tag says how each number is known (M measured, S stated,
D derived, E estimate, C from kernel source). Scenarios override single fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model
from pydantic import Field as Field  # re-exported: plugins declare their cost fields with it

# re-exported: defined in a leaf module so that registering a mode does not build CostModel
from vpmu_core.cost_fields import CostField as CostField
from vpmu_core.cost_fields import CostFields as CostFields


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


#: a preset: field -> value (host cycles) for the fields whose numbers differ from the defaults
CostValues = Mapping[str, int | float]


def compose_cost_model(declared: Iterable[tuple[str, type[BaseModel] | None]]) -> type[CostModel]:
    """`CostModel` plus the fields each `(owner, model)` declares (a mode's, a facility's, a
    vendor's), as one model. A field declared twice (or one the core has) is a `ValueError`."""
    fields: dict[str, Any] = {}
    owner_of = dict.fromkeys(CostModel.model_fields, "the core")
    for owner, model in declared:
        if model is None:
            continue
        for name, info in model.model_fields.items():
            if name in owner_of:
                raise ValueError(f"cost field {name!r} of {owner} is already declared by {owner_of[name]}")
            owner_of[name] = owner
            fields[name] = (info.annotation, info)
    if not fields:
        return CostModel
    return create_model("ComposedCostModel", __base__=CostModel, **fields)


def cost_model(
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    model: type[CostModel] = CostModel,
    presets: Mapping[str, CostValues] | None = None,
) -> CostModel:
    """`model` with `presets[preset]` and then `overrides` applied. `preset` None = the
    defaults; a name `presets` does not have is a `ValueError` naming the ones it has."""
    known = presets or {}
    if preset is not None and preset not in known:
        raise ValueError(f"unknown cost preset {preset!r} (allowed: {', '.join(sorted(known)) or 'none'})")
    base: dict[str, Any] = dict(known.get(preset, {})) if preset is not None else {}
    base.update(overrides or {})
    return model(**base)
