"""The core's mode conformance kit, with both vendor plugins, in each loading policy."""

from __future__ import annotations

from typing import Any, ClassVar

from vpmu_core.testing.conformance import ModeConformance


class TestXenLazyConformance(ModeConformance):
    plugin_name = "mode_xen_lazy"
    mode_name = "xen_lazy"
    vendor_plugins = ("intel_arch", "amd_perfmon")


class TestXenEagerConformance(ModeConformance):
    plugin_name = "mode_xen_lazy"
    mode_name = "xen_lazy"
    mode_options: ClassVar[dict[str, Any]] = {"lazy": False}
    vendor_plugins = ("intel_arch", "amd_perfmon")
