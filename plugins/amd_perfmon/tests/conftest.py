"""Shared fixtures: models, PMUs and a tiny CPU for driving the real perf core."""

from __future__ import annotations

from typing import Any

import pytest

from vpmu_amd_perfmon.models import MODELS, AmdCpuModel, make_model
from vpmu_amd_perfmon.pmu import AmdPmu

MODEL_NAMES = sorted(MODELS)


class PmuPort:
    """A RegisterPort over one PMU: MSRs and RDPMC go to it, CPUID to a model's table."""

    def __init__(self, pmu: AmdPmu, table: Any) -> None:
        self.pmu = pmu
        self.table = table

    def rdmsr(self, msr: int) -> int:
        return self.pmu.rdmsr(msr)

    def wrmsr(self, msr: int, value: int) -> None:
        self.pmu.wrmsr(msr, value)

    def rdpmc(self, ecx: int) -> int:
        return self.pmu.rdpmc(ecx)

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        return self.table.get(leaf, subleaf)


class FakeCpu:
    """The `PerfCpu` perf needs: an index, a port, no task, a clock."""

    def __init__(self, index: int, port: PmuPort) -> None:
        self.index = index
        self.port = port
        self.current_task = None
        self.ns = 0

    def now_ns(self) -> int:
        return self.ns


@pytest.fixture(params=MODEL_NAMES)
def model(request: pytest.FixtureRequest) -> AmdCpuModel:
    return make_model(request.param)


@pytest.fixture
def zen4() -> AmdCpuModel:
    return make_model("amd/zen4")


@pytest.fixture
def zen2() -> AmdCpuModel:
    return make_model("amd/zen2")


@pytest.fixture
def k8() -> AmdCpuModel:
    return make_model("amd/k8")
