"""Core tests always name their plugin set (the toy vendor + reference mode)."""

from __future__ import annotations

import pytest

import vpmu_core as vpmu
from vpmu_core.testing import toy


@pytest.fixture
def host_factory():
    def make(cpus: int = 2, seed: int = 0, **kw):
        return vpmu.compose(cpu="toy/basic", mode="reference", plugins=[("toy", toy)], cpus=cpus, seed=seed, **kw)

    return make


@pytest.fixture
def host(host_factory):
    return host_factory()
