"""vpmu mode plugin `xen_lazy`: Xen's vPMU (xen/arch/x86/cpu/vpmu.c, vpmu_intel.c,
vpmu_amd.c), written against the public plugin API (`vpmu_core.api`) only.

Importing registers nothing (the `vpmu.plugins` entry point `mode_xen_lazy` points here and
discovery calls the hook below).
"""

from __future__ import annotations

from typing import Any

from vpmu_core.api import ModeSpec, hookimpl
from vpmu_mode_xen_lazy.mode import OPTIONS, XenLazyMode

__version__ = "0.1.0"


@hookimpl
def vpmu_register_modes(register: Any) -> None:
    register(
        ModeSpec(
            name="xen_lazy",
            factory=XenLazyMode,
            description="Xen's vPMU: trapped accesses, per-vCPU context loaded lazily at schedule-in, saved at schedule-out",
            options=dict(OPTIONS),
        )
    )


__all__ = ["XenLazyMode", "vpmu_register_modes"]
