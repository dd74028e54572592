"""vpmu mode plugin `mediated`: KVM's mediated passthrough vPMU (Linux 7.0) and the
placements it was argued against (`switch_at = run_loop | exit | vcpu_run`).

Importing this package registers nothing by itself (pitfall P16): the `vpmu.plugins`
entry point `mode_mediated` points here and discovery calls the hook below.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from vpmu_core.api import ModeSpec, hookimpl

from vpmu_mode_mediated.costs import COST_PRESETS, MediatedCosts
from vpmu_mode_mediated.mode import MediatedMode
from vpmu_mode_mediated.options import OPTION_HELP

__version__ = "0.1.0"


def make_mode(model: Any, options: dict[str, Any]) -> MediatedMode:
    """ModeSpec factory: raises ConfigError for a host without the required PMU."""
    return MediatedMode(model, options)


@hookimpl
def vpmu_register_modes(register: Any) -> None:
    register(
        ModeSpec(
            name="mediated",
            factory=make_mode,
            description="mediated passthrough vPMU (KVM, Linux 7.0): guest owns the PMU while loaded",
            options=dict(OPTION_HELP),
            costs=MediatedCosts,
            cost_presets=COST_PRESETS,
        )
    )


@hookimpl
def vpmu_register_scenarios(register: Any) -> None:
    """The shipped scenarios: NMI watchdog coexistence, placement debate, active counters."""
    root = resources.files("vpmu_mode_mediated") / "scenarios"
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        path = Path(str(entry))
        if path.suffix == ".yaml":
            register(path.stem, str(path))


__all__ = ["MediatedMode", "make_mode", "vpmu_register_modes", "vpmu_register_scenarios"]
