"""Fixtures of the intel_archlbr tests; puts this folder on sys.path so tests can import
`lbr_helpers` under --import-mode=importlib."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from lbr_helpers import ARCH_CPU, LEGACY_CPUS, make_vcpu  # noqa: E402


@pytest.fixture(params=LEGACY_CPUS)
def legacy_vcpu(request: pytest.FixtureRequest) -> Any:
    """A guest with legacy LBR on each legacy model (reference mode, no background exits)."""
    return make_vcpu(request.param, "lbr")


@pytest.fixture
def arch_vcpu() -> Any:
    """A Sapphire Rapids guest with Arch LBR (KVM depth rule)."""
    return make_vcpu(ARCH_CPU, "arch_lbr")
