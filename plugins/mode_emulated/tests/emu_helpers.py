"""Test helpers: compose with explicit plugins, and program a guest's vPMU through the
vendor model's role methods (the event codes per vendor are test data, not mode code)."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import vpmu_core
from vpmu_core.events import EventKind

import vpmu_mode_emulated

#: x86 selector bits shared by Intel, AMD and the toy vendor
USR, OS, INT, EN = 1 << 16, 1 << 17, 1 << 20, 1 << 22

#: (entry point name, module name, models)
VENDORS = [
    ("intel_arch", "vpmu_intel_arch", ("intel/skylake", "intel/icelake", "intel/sapphirerapids")),
    ("amd_perfmon", "vpmu_amd_perfmon", ("amd/k8", "amd/zen2", "amd/zen4")),
]
EVENT_CODES = {
    "intel": {EventKind.INSTRUCTIONS: 0x00C0, EventKind.BRANCHES: 0x00C4, EventKind.CYCLES: 0x003C},
    "amd": {EventKind.INSTRUCTIONS: 0x00C0, EventKind.BRANCHES: 0x00C2, EventKind.CYCLES: 0x0076},
    "toy": {EventKind.INSTRUCTIONS: 0x01, EventKind.BRANCHES: 0x05, EventKind.CYCLES: 0x00},
}


def _available() -> dict[str, tuple[str, Any]]:
    out: dict[str, tuple[str, Any]] = {}
    for ep, mod, models in VENDORS:
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        for cpu in models:
            out[cpu] = (ep, m)
    return out


AVAILABLE = _available()
MODELS = sorted(AVAILABLE)
INTEL = [m for m in MODELS if m.startswith("intel/")]
PREFERRED = "intel/icelake" if "intel/icelake" in AVAILABLE else (MODELS[0] if MODELS else None)


def plugins_for(cpu: str) -> list[tuple[str, Any]]:
    if cpu.startswith("toy/"):
        from vpmu_core.testing import toy

        return [("toy", toy), ("mode_emulated", vpmu_mode_emulated)]
    ep, mod = AVAILABLE[cpu]
    return [(ep, mod), ("mode_emulated", vpmu_mode_emulated)]


def make_host(cpu: str, **kw: Any) -> Any:
    """Compose `cpu` with the emulated mode, naming the plugins explicitly."""
    return vpmu_core.compose(cpu=cpu, mode="emulated", plugins=plugins_for(cpu), **kw)


def need(cpu: str | None) -> str:
    if cpu is None or (cpu not in AVAILABLE and not cpu.startswith("toy/")):
        pytest.skip(f"{cpu} not installed")
    return cpu  # type: ignore[return-value]


class Guest:
    """A guest kernel driving its vPMU by WRMSR/RDMSR, vendor-neutral via role methods."""

    def __init__(self, vcpu: Any) -> None:
        self.v = vcpu
        self.pmu = vcpu.pmu
        self.codes = EVENT_CODES[vcpu.pmu.vendor]
        self.gctrl = self.pmu.global_msrs().get("ctrl")
        self.gstatus = self.pmu.global_msrs().get("status")

    def gp(self, i: int) -> Any:
        return self.pmu.gp[i]

    def sel(
        self, i: int, kind: EventKind | int, *, en: bool = True, intr: bool = False, usr: bool = True, os: bool = True
    ) -> int:
        code = self.codes[kind] if isinstance(kind, EventKind) else kind
        v = code | (USR if usr else 0) | (OS if os else 0) | (INT if intr else 0) | (EN if en else 0)
        self.v.wrmsr(self.pmu.eventsel_msr(self.gp(i)), v)
        return v

    def set_global(self, mask: int) -> None:
        if self.gctrl is not None:
            self.v.wrmsr(self.gctrl, mask)

    def all_gp(self, n: int) -> int:
        return (1 << n) - 1

    def read(self, i: int) -> int:
        return self.v.rdmsr(self.pmu.counter_msrs(self.gp(i))[0])

    def write(self, i: int, value: int) -> None:
        self.v.wrmsr(self.pmu.counter_msrs(self.gp(i))[0], value)

    def kpmu(self) -> Any:
        return self.v.mode_state
