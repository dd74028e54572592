"""vpmu mode plugin `mediated`: KVM's mediated passthrough vPMU (Linux 7.0) and the
placements it was argued against (`switch_at = run_loop | exit | vcpu_run`).

Importing this package registers nothing by itself (pitfall P16): the `vpmu.plugins`
entry point `mode_mediated` points here and discovery calls the hook below.
"""

from __future__ import annotations

from typing import Any

from vpmu_core.plugins.markers import hookimpl
from vpmu_core.plugins.records import ModeSpec

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
        )
    )


__all__ = ["MediatedMode", "make_mode", "vpmu_register_modes"]
