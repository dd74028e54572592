"""vpmu mode plugin `xen_lazy`: Xen's vPMU (xen/arch/x86/cpu/vpmu.c, vpmu_intel.c,
vpmu_amd.c), written against the public plugin API (`vpmu_core.api`) only.

Importing registers nothing (the `vpmu.plugins` entry point `mode_xen_lazy` points here and
discovery calls the hook below). Registering imports only the option declarations
(`options.py`): the mode (`mode.py`) is imported when a host is composed with it, or when
`XenLazyMode` is first looked up here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vpmu_core.api import ModeSpec, hookimpl

if TYPE_CHECKING:
    from vpmu_mode_xen_lazy.mode import XenLazyMode

__version__ = "0.1.0"


def make_mode(model: Any, options: dict[str, Any]) -> XenLazyMode:
    """The ModeSpec factory: `XenLazyMode(model, options)`."""
    from vpmu_mode_xen_lazy.mode import XenLazyMode

    return XenLazyMode(model, options)


def __getattr__(name: str) -> Any:
    """`vpmu_mode_xen_lazy.XenLazyMode`, imported on first use (PEP 562)."""
    if name == "XenLazyMode":
        from vpmu_mode_xen_lazy.mode import XenLazyMode

        return XenLazyMode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def vpmu_register_modes(register: Any) -> None:
    from vpmu_mode_xen_lazy.options import OPTIONS

    register(
        ModeSpec(
            name="xen_lazy",
            factory=make_mode,
            description="Xen's vPMU: trapped accesses, per-vCPU context loaded lazily at schedule-in, saved at schedule-out",
            options=dict(OPTIONS),
        )
    )


__all__ = ["XenLazyMode", "make_mode", "vpmu_register_modes"]
