"""vpmu vendor plugin `amd_perfmon`: AMD legacy PerfMon (K8), PerfCtrExtCore (Zen 2) and
PerfMonV2 (Zen 4), with the perf driver that programs them.

Importing this package has no side effects; the only hook registers the three models from
the data in `registry.py` (the models themselves are imported when one is composed).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from vpmu_core.api import CpuModelSpec, hookimpl

__version__ = "0.1.0"


@hookimpl
def vpmu_register_cpu_models(register: Callable[..., None]) -> None:
    """Register amd/k8, amd/zen2 and amd/zen4."""
    from vpmu_amd_perfmon.registry import COST_PRESETS, DESCRIPTIONS, MODEL_OPTIONS

    for name, description in DESCRIPTIONS.items():
        register(
            CpuModelSpec(
                name=name,
                vendor="amd",
                factory=partial(_factory, name),
                description=description,
                options=dict(MODEL_OPTIONS),
                cost_presets=COST_PRESETS,
            )
        )


def _factory(name: str, options: dict[str, Any] | None = None) -> Any:
    from vpmu_amd_perfmon.models import make_model

    return make_model(name, options)
