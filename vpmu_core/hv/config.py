"""Guest PMU configuration (what userspace sets through CPUID / PERF_CAPABILITIES)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: the `GuestPmuConfig` fields that switch facilities for a guest, with what they give (for
#: messages). A facility names its switch in its `FacilitySpec.guest_switch`; the core knows
#: only this field, never the facilities behind it.
FACILITY_SWITCHES = {"lbr": "LBR"}


class GuestPmuConfig(BaseModel):
    """None = as the host model. Vendors clamp like KVM (`kvm_pmu_refresh`): a version or a
    count above the host's is reduced to the host's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int | None = Field(None, ge=0)
    gp_counters: int | None = Field(None, ge=0)
    fixed_counters: int | None = Field(None, ge=0)
    full_width_writes: bool | None = None
    lbr: bool | None = None
    #: architectural events the guest's CPUID says are unavailable (Intel CPUID.0AH:EBX,
    #: bit n = event n; userspace sets it with KVM_SET_CPUID2). KVM does not enforce it: a
    #: hidden event still counts if the host supports it. None = every event available.
    unavailable_events: int | None = Field(None, ge=0, lt=1 << 32)
    #: facility-specific settings (e.g. {"arch_lbr": {"depth": 32}})
    facility_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
