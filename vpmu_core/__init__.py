"""vpmu: a deterministic, executable model of x86 PMU virtualization (DESIGN §5).

Importing this package discovers and builds nothing: the public names load on first use
(PEP 562), so `import vpmu_core` costs about what starting Python does; `catalog()` and
`compose()` do the work.
"""

from __future__ import annotations

from vpmu_core.lazy import lazy_exports

#: typing.TYPE_CHECKING without importing typing (a third of this package's import time);
#: mypy treats any name TYPE_CHECKING as true
TYPE_CHECKING = False

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "ConfigError": "vpmu_core.errors",
    "CostModel": "vpmu_core.costs",
    "CpuModelSpec": "vpmu_core.plugins.records",
    "EventKind": "vpmu_core.events",
    "EventState": "vpmu_core.perf.attr",
    "ExitProfile": "vpmu_core.engine.exits",
    "FacilitySpec": "vpmu_core.plugins.records",
    "GuestFault": "vpmu_core.errors",
    "GuestPmuConfig": "vpmu_core.hv.config",
    "Host": "vpmu_core.host",
    "ModeSpec": "vpmu_core.plugins.records",
    "StateError": "vpmu_core.errors",
    "VmDestroyedError": "vpmu_core.errors",
    "PerfCount": "vpmu_core.perf.attr",
    "PerfError": "vpmu_core.errors",
    "PerfEventAttr": "vpmu_core.perf.attr",
    "Work": "vpmu_core.events",
    "catalog": "vpmu_core.plugins.discovery",
    "compose": "vpmu_core.host",
    "hookimpl": "vpmu_core.markers",
    "hookspec": "vpmu_core.markers",
}

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
    "Host",
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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:
    from vpmu_core.costs import CostModel
    from vpmu_core.engine.exits import ExitProfile
    from vpmu_core.errors import ConfigError, GuestFault, PerfError, StateError, VmDestroyedError
    from vpmu_core.events import EventKind, Work
    from vpmu_core.host import Host, compose
    from vpmu_core.hv.config import GuestPmuConfig
    from vpmu_core.markers import hookimpl, hookspec
    from vpmu_core.perf.attr import EventState, PerfCount, PerfEventAttr
    from vpmu_core.plugins.discovery import catalog
    from vpmu_core.plugins.records import CpuModelSpec, FacilitySpec, ModeSpec
