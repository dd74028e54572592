"""Registration hook: the `lbr` and `arch_lbr` facilities, each on the models that have it.

Why `applies_to` reads `model.features`: intel_arch's models carry their LBR facts as data
(`features["lbr"]` on Skylake/Ice Lake, `features["arch_lbr"]` on Sapphire Rapids); the
facility never guesses from a model name.

Registering imports only the depth rules (`policy.py`); each factory imports its facility
when it is called (a composition), so discovering the plugin (`vpmu plugins`) imports none
of the LBR implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vpmu_core.api import FacilitySpec, hookimpl
from vpmu_intel_archlbr.policy import DEPTH_RULES


def make_lbr(model: Any, options: dict[str, Any]) -> Any:
    """The `lbr` facility: `LegacyLbr(model, options)`."""
    from vpmu_intel_archlbr.legacy import LegacyLbr

    return LegacyLbr(model, options)


def make_arch_lbr(model: Any, options: dict[str, Any]) -> Any:
    """The `arch_lbr` facility: `ArchLbr(model, options)`."""
    from vpmu_intel_archlbr.arch import ArchLbr

    return ArchLbr(model, options)


def _has(feature: str) -> Callable[[Any], bool]:
    def applies(model: Any) -> bool:
        return bool(getattr(model, "features", {}).get(feature))

    return applies


@hookimpl
def vpmu_register_facilities(register: Callable[..., None]) -> None:
    """Register `lbr` (legacy, model-specific) and `arch_lbr` (Architectural LBR)."""
    register(
        FacilitySpec(
            name="lbr",
            factory=make_lbr,
            applies_to=_has("lbr"),
            guest_switch="lbr",
            description="legacy LBR: DEBUGCTL, LBR_SELECT, TOS, FROM/TO/INFO at the model's bases and depth",
        )
    )
    register(
        FacilitySpec(
            name="arch_lbr",
            factory=make_arch_lbr,
            applies_to=_has("arch_lbr"),
            guest_switch="lbr",
            description="Arch LBR: CPUID 1CH, LBR_CTL/DEPTH, records, XSAVES component 15, KVM depth rule",
            options={
                "depth_rule": f"{' | '.join(DEPTH_RULES)}: guests may use only the host's depth (KVM) or any",
                "host_depth": "the host's IA32_LBR_DEPTH (default: the largest enumerated)",
            },
        )
    )
