"""The core's mode conformance kit, with every installed vendor plugin."""

from __future__ import annotations

from typing import ClassVar

import pytest
from emu_helpers import AVAILABLE

conformance = pytest.importorskip("vpmu_core.testing.conformance")
_VENDORS = tuple(sorted({ep for ep, _ in AVAILABLE.values()}))


@pytest.mark.skipif(not _VENDORS, reason="no vendor plugin installed")
class TestEmulatedMode(conformance.ModeConformance):
    plugin_name = "mode_emulated"
    mode_name = "emulated"
    vendor_plugins: ClassVar[tuple[str, ...]] = _VENDORS
