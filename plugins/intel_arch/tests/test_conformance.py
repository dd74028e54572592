"""The core conformance kit, run against this plugin through its installed entry point."""

from __future__ import annotations

from typing import ClassVar

from vpmu_core.testing.conformance import VendorConformance

#: IA32_PERF_CAPABILITIES (SDM Vol. 4 Table 2-2): what KVM may give a guest there is the LBR
#: format [5:0] and full-width writes [13] (vmx_get_perf_capabilities(); PEBS is not modelled)
MSR_PERF_CAPABILITIES = 0x345
GUEST_PERF_CAPABILITIES = 0x3F | 1 << 13


class TestIntelArchConformance(VendorConformance):
    plugin_name = "intel_arch"
    #: IA32_PMCx writes sign-extend bit 31 (SDM Vol. 3B 20.2.6); IA32_A_PMCx is the full one
    legacy_counter_writes: ClassVar[str | None] = "sign_extend"
    #: fixed counter 3 (TOPDOWN.SLOTS, v5 models) has no generic perf event
    raw_events: ClassVar[dict[str, tuple[int, ...]]] = {
        "intel/icelake": (0x0400,),
        "intel/sapphirerapids": (0x0400,),
    }
    #: AnyThread (EVTSEL bit 21) is in KVM's pmu->reserved_bits for every guest
    guest_reserved_selector_bits: ClassVar[int] = 1 << 21
    guest_capability_bits: ClassVar[dict[int, int]] = {MSR_PERF_CAPABILITIES: GUEST_PERF_CAPABILITIES}
