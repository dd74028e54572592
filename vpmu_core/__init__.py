"""vpmu: a deterministic, executable model of x86 PMU virtualization (DESIGN §5).

Importing this package discovers nothing; `catalog()` and `compose()` do.
"""

from __future__ import annotations

from vpmu_core.costs import CostModel
from vpmu_core.engine.exits import ExitProfile
from vpmu_core.errors import ConfigError, GuestFault, PerfError, StateError, VmDestroyedError
from vpmu_core.events import EventKind, Work
from vpmu_core.hv.config import GuestPmuConfig
from vpmu_core.perf.attr import EventState, PerfCount, PerfEventAttr
from vpmu_core.plugins.compose import compose
from vpmu_core.plugins.discovery import catalog
from vpmu_core.plugins.markers import hookimpl, hookspec
from vpmu_core.plugins.records import CpuModelSpec, FacilitySpec, ModeSpec

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CostModel",
    "CpuModelSpec",
    "EventKind",
    "EventState",
    "ExitProfile",
    "FacilitySpec",
    "GuestFault",
    "GuestPmuConfig",
    "ModeSpec",
    "PerfCount",
    "PerfError",
    "PerfEventAttr",
    "StateError",
    "VmDestroyedError",
    "Work",
    "catalog",
    "compose",
    "hookimpl",
    "hookspec",
]
