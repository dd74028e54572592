"""The core's mode conformance kit, with both vendor plugins (the mode refuses models that
lack its requirements; the kit skips those)."""

from __future__ import annotations

from vpmu_core.testing.conformance import ModeConformance


class TestMediatedConformance(ModeConformance):
    plugin_name = "mode_mediated"
    mode_name = "mediated"
    vendor_plugins = ("intel_arch", "amd_perfmon")


class TestMediatedExitPlacementConformance(ModeConformance):
    plugin_name = "mode_mediated"
    mode_name = "mediated"
    mode_options = {"switch_at": "exit"}
    vendor_plugins = ("intel_arch", "amd_perfmon")


class TestMediatedVcpuRunPlacementConformance(ModeConformance):
    plugin_name = "mode_mediated"
    mode_name = "mediated"
    mode_options = {"switch_at": "vcpu_run"}
    vendor_plugins = ("intel_arch", "amd_perfmon")
