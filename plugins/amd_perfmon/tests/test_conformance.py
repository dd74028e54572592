"""The core's vendor conformance kit, on every AMD model."""

from __future__ import annotations

from typing import ClassVar

from vpmu_core.testing.conformance import VendorConformance


class TestAmdPerfmon(VendorConformance):
    plugin_name = "amd_perfmon"
    #: KVM svm/pmu.c drops reserved selector bits silently instead of injecting #GP
    reserved_policy: ClassVar[str] = "drop"
    #: the K7 PERFCTR0-3 aliases are the same 48-bit registers (no sign extension)
    legacy_counter_writes: ClassVar[str | None] = "full"
