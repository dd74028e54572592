"""Registration hook: the four Intel CPU models of this plugin."""

from __future__ import annotations

from collections.abc import Callable

from vpmu_core.api import CpuModelSpec, hookimpl
from vpmu_intel_arch import gracemont
from vpmu_intel_arch.models import COST_PRESETS, make_icelake, make_sapphirerapids, make_skylake


@hookimpl
def vpmu_register_cpu_models(register: Callable[..., None]) -> None:
    """Register intel/skylake, intel/icelake, intel/sapphirerapids and intel/gracemont."""
    register(
        CpuModelSpec(
            name="intel/skylake",
            vendor="intel",
            factory=make_skylake,
            cost_presets=COST_PRESETS,
            description="Skylake: PMU v4, 4 GP per thread (8 without SMT) + 3 fixed, 48-bit, legacy LBR 32",
            options={"smt": "SMT on (default): 4 GP counters per thread; off: 8"},
        )
    )
    register(
        CpuModelSpec(
            name="intel/icelake",
            vendor="intel",
            factory=make_icelake,
            cost_presets=COST_PRESETS,
            description="Ice Lake: PMU v5, 8 GP + 4 fixed (SLOTS), perf metrics, legacy LBR 32",
        )
    )
    register(
        CpuModelSpec(
            name="intel/sapphirerapids",
            vendor="intel",
            factory=make_sapphirerapids,
            cost_presets=COST_PRESETS,
            description="Sapphire Rapids: PMU v5, 8 GP + 4 fixed, perf metrics, Arch LBR",
        )
    )
    register(gracemont.SPEC)
