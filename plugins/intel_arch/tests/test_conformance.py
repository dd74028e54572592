"""The core conformance kit, run against this plugin through its installed entry point."""

from __future__ import annotations

from vpmu_core.testing.conformance import VendorConformance


class TestIntelArchConformance(VendorConformance):
    plugin_name = "intel_arch"
