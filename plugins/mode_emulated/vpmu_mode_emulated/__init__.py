"""vpmu mode plugin `mode_emulated`: KVM's perf-based ("emulated") vPMU.

Faithful to arch/x86/kvm/pmu.c: every guest PMU access is intercepted, each guest counter
is backed by a pinned, exclude_host, per-task host perf event that competes with host
perf users, the perf work is deferred to the next VM-entry, and what the guest loses under
contention is recorded as silent errors. Importing this package has no side effects, and
registering the mode imports only its option and cost declarations (`options.py`,
`costs.py`): the factory imports the mode when a host is composed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vpmu_core.api import ModeSpec, hookimpl

__version__ = "0.1.0"


def _factory(model: Any, options: dict[str, Any]) -> Any:
    from vpmu_mode_emulated.mode import EmulatedMode

    return EmulatedMode(model, options)


@hookimpl
def vpmu_register_modes(register: Callable[..., None]) -> None:
    """Register the `emulated` mode."""
    from vpmu_mode_emulated.costs import EmulatedCosts
    from vpmu_mode_emulated.options import OPTIONS

    register(
        ModeSpec(
            name="emulated",
            factory=_factory,
            description="KVM emulated vPMU: guest counters backed by host perf events (silent errors under contention)",
            options=dict(OPTIONS),
            costs=EmulatedCosts,
        )
    )


#: shipped scenarios (gap document §3.2 cases, seed-talk guest multiplexing)
SCENARIOS_DIR = Path(__file__).parent / "scenarios"


@hookimpl
def vpmu_register_scenarios(register: Callable[..., None]) -> None:
    """Ship the emulated-mode scenarios (`vpmu run emulated-gap-3.2-case3`)."""
    for path in sorted(SCENARIOS_DIR.glob("*.yaml")):
        name = path.stem.replace("gap_3_2_case", "emulated-gap-3.2-case").replace(
            "gap_4_2_case", "emulated-gap-4.2-case"
        )
        name = name.replace("guest_mux_", "emulated-guest-mux-")
        register(name, str(path))
