"""Core tests always name their plugin set (the toy vendor + reference mode)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import vpmu_core as vpmu
from vpmu_core.testing import toy


@pytest.fixture(autouse=True, scope="session")
def _listing_cache_of_this_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The `vpmu` commands the tests run keep their listing cache (vpmu_core/cli/listing_cache.py)
    in a folder of this session, never in the user's ~/.cache/vpmu; it stays on, so every
    `vpmu plugins` of the suite goes through it."""
    old = os.environ.get("VPMU_CACHE_DIR")
    os.environ["VPMU_CACHE_DIR"] = str(tmp_path_factory.mktemp("vpmu-cache"))
    yield
    if old is None:
        os.environ.pop("VPMU_CACHE_DIR", None)
    else:
        os.environ["VPMU_CACHE_DIR"] = old


@pytest.fixture
def host_factory():
    def make(cpus: int = 2, seed: int = 0, **kw):
        return vpmu.compose(cpu="toy/basic", mode="reference", plugins=[("toy", toy)], cpus=cpus, seed=seed, **kw)

    return make


@pytest.fixture
def host(host_factory):
    return host_factory()
