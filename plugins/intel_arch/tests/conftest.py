"""Fixtures for the intel_arch tests (helpers live here: --import-mode=importlib forbids
importing sibling test modules)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from vpmu_intel_arch.gracemont import make_gracemont
from vpmu_intel_arch.models import IntelCpuModel, make_icelake, make_sapphirerapids, make_skylake

from vpmu_core.hv.config import GuestPmuConfig
from vpmu_core.hw.cpuid import CpuidTable
from vpmu_core.hw.pmu import PmuBase

FACTORIES: dict[str, Callable[[dict[str, Any]], IntelCpuModel]] = {
    "intel/skylake": make_skylake,
    "intel/icelake": make_icelake,
    "intel/sapphirerapids": make_sapphirerapids,
    "intel/gracemont": make_gracemont,
}


@pytest.fixture(params=sorted(FACTORIES))
def model(request: pytest.FixtureRequest) -> IntelCpuModel:
    """Every model of the plugin, with default options."""
    return FACTORIES[request.param]({})


class Port:
    """A RegisterPort over a PMU; `physical` ports also take VM-entry loads."""

    def __init__(self, pmu: PmuBase, table: CpuidTable, physical: bool) -> None:
        self.pmu = pmu
        self.table = table
        self.log: list[tuple[str, int, int]] = []
        if physical:
            self.set_entry_loads = pmu.set_entry_loads

    @property
    def entry_loads(self) -> dict[int, int]:
        return self.pmu.entry_loads

    def rdmsr(self, msr: int) -> int:
        return self.pmu.rdmsr(msr)

    def wrmsr(self, msr: int, value: int) -> None:
        self.log.append(("wrmsr", msr, value))
        self.pmu.wrmsr(msr, value)

    def rdpmc(self, ecx: int) -> int:
        return self.pmu.rdpmc(ecx)

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        self.log.append(("cpuid", leaf, subleaf))
        return self.table.get(leaf, subleaf)


class FakeCpu:
    """The PerfCpu protocol: index, port, current_task, now_ns()."""

    def __init__(self, index: int, port: Port) -> None:
        self.index = index
        self.port = port
        self.current_task = None
        self.now = 0

    def now_ns(self) -> int:
        return self.now


@pytest.fixture
def make_cpu() -> Callable[..., FakeCpu]:
    """make_cpu(model, guest=None) -> FakeCpu over a fresh PMU of that model."""

    def make(model: IntelCpuModel, guest: GuestPmuConfig | None = None, index: int = 0) -> FakeCpu:
        pmu = model.make_pmu(guest)
        return FakeCpu(index, Port(pmu, model.cpuid_table(guest), physical=guest is None))

    return make
