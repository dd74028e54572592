"""intel/gracemont: the Atom E-core of Alder Lake-N, as model data for the shared Intel
architectural PMU (`ModelData` -> `IntelCpuModel`: register model, CPUID, driver, clamp).

Sources: Linux arch/x86/events/intel/core.c `intel_pmu_init`, `case INTEL_ATOM_GRACEMONT:
intel_pmu_init_grt(NULL)` (no perf metrics, no topdown slots counter: the Atom topdown
events are GP events, `tnt_events_attrs`) and `intel_grt_event_constraints`; SDM Vol. 3B
20.2 and Table 20-1 for CPUID.0AH (v5: 6 GP and 3 fixed counters, 48 bits, AnyThread
deprecated, CPUID.0AH:EAX[31:24] = 7: Topdown Slots, event 7, is not enumerated).
"""

from __future__ import annotations

from typing import Any

from vpmu_core.api import CpuModelSpec
from vpmu_intel_arch.events import Constraint, fixed_c
from vpmu_intel_arch.models import COST_PRESETS, IntelCpuModel, ModelData, no_options
from vpmu_intel_arch.registry import DESCRIPTIONS

# arch/x86/events/intel/core.c `intel_grt_event_constraints`: the fixed counters only
GRT_CONSTRAINTS: tuple[Constraint, ...] = (
    fixed_c(0x00C0, 0),  # INST_RETIRED.ANY
    fixed_c(0x003C, 1),  # CPU_CLK_UNHALTED.CORE
    fixed_c(0x0300, 2),  # pseudo CPU_CLK_UNHALTED.REF
    fixed_c(0x013C, 2),  # CPU_CLK_UNHALTED.REF_TSC_P
)

GRACEMONT = ModelData(
    name="intel/gracemont",
    description=DESCRIPTIONS["intel/gracemont"],  # what `vpmu models` lists (registry.py)
    signature=0xB06E0,  # family 6, model 0xBE (INTEL_ATOM_GRACEMONT, Alder Lake-N)
    max_leaf=0x20,
    version=5,
    n_gp=6,
    n_fixed=3,
    width=48,
    arch_events_len=7,
    constraints=GRT_CONSTRAINTS,
    perf_metrics=False,
    anythread=False,  # v5: CPUID.0AH:EDX[15] AnyThread deprecated (SDM 20.2.5)
    full_width_writes=True,  # PERF_CAPABILITIES[13]
)


def make_gracemont(options: dict[str, Any] | None = None) -> IntelCpuModel:
    no_options(GRACEMONT.name, dict(options or {}))
    return IntelCpuModel(GRACEMONT)


SPEC = CpuModelSpec(
    name=GRACEMONT.name,
    vendor="intel",
    factory=make_gracemont,
    description=GRACEMONT.description,
    cost_presets=COST_PRESETS,
)
