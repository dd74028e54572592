"""Shared fixtures: the models."""

from __future__ import annotations

import pytest

from vpmu_amd_perfmon.models import MODELS, AmdCpuModel, make_model

MODEL_NAMES = sorted(MODELS)


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
