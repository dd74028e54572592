"""Registration hook: the four Intel CPU models of this plugin.

Registering reads only the data in `registry.py`; each factory imports its model when it is
called (a composition), so discovering the plugin imports none of the implementation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vpmu_core.api import CpuModelSpec, hookimpl
from vpmu_intel_arch.registry import COST_PRESETS, DESCRIPTIONS, OPTIONS


def make_skylake(options: dict[str, Any] | None = None) -> Any:
    from vpmu_intel_arch.models import make_skylake

    return make_skylake(options)


def make_icelake(options: dict[str, Any] | None = None) -> Any:
    from vpmu_intel_arch.models import make_icelake

    return make_icelake(options)


def make_sapphirerapids(options: dict[str, Any] | None = None) -> Any:
    from vpmu_intel_arch.models import make_sapphirerapids

    return make_sapphirerapids(options)


def make_gracemont(options: dict[str, Any] | None = None) -> Any:
    from vpmu_intel_arch.gracemont import make_gracemont

    return make_gracemont(options)


FACTORIES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "intel/skylake": make_skylake,
    "intel/icelake": make_icelake,
    "intel/sapphirerapids": make_sapphirerapids,
    "intel/gracemont": make_gracemont,
}


@hookimpl
def vpmu_register_cpu_models(register: Callable[..., None]) -> None:
    """Register intel/skylake, intel/icelake, intel/sapphirerapids and intel/gracemont."""
    for name, description in DESCRIPTIONS.items():
        register(
            CpuModelSpec(
                name=name,
                vendor="intel",
                factory=FACTORIES[name],
                cost_presets=COST_PRESETS,
                description=description,
                options=dict(OPTIONS.get(name, {})),
            )
        )
