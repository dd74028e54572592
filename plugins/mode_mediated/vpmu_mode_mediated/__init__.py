"""vpmu mode plugin `mediated`: KVM's mediated passthrough vPMU (Linux 7.0) and the
placements it was argued against (`switch_at = run_loop | exit | vcpu_run`).

Importing this package registers nothing by itself (pitfall P16): the `vpmu.plugins`
entry point `mode_mediated` points here and discovery calls the hook below. Registering
imports only the mode's option and cost declarations (`options.py`, `costs.py`); the mode
itself (`mode.py`) is imported when a host is composed with it (`make_mode`), or when
`MediatedMode` is first looked up here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vpmu_core.api import ModeSpec, hookimpl

if TYPE_CHECKING:
    from vpmu_mode_mediated.mode import MediatedMode

__version__ = "0.1.0"


def make_mode(model: Any, options: dict[str, Any]) -> MediatedMode:
    """ModeSpec factory: raises ConfigError for a host without the required PMU."""
    from vpmu_mode_mediated.mode import MediatedMode

    return MediatedMode(model, options)


def __getattr__(name: str) -> Any:
    """`vpmu_mode_mediated.MediatedMode`, imported on first use (PEP 562)."""
    if name == "MediatedMode":
        from vpmu_mode_mediated.mode import MediatedMode

        return MediatedMode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def vpmu_register_modes(register: Any) -> None:
    from vpmu_mode_mediated.costs import COST_PRESETS, MediatedCosts
    from vpmu_mode_mediated.options import OPTION_HELP

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


#: shipped scenarios (docs: README.md)
SCENARIOS_DIR = Path(__file__).parent / "scenarios"


@hookimpl
def vpmu_register_scenarios(register: Any) -> None:
    """The shipped scenarios: NMI watchdog coexistence, placement debate, active counters."""
    for path in sorted(SCENARIOS_DIR.iterdir(), key=lambda p: p.name):
        if path.suffix == ".yaml":
            register(path.stem, str(path))


__all__ = ["MediatedMode", "make_mode", "vpmu_register_modes", "vpmu_register_scenarios"]
