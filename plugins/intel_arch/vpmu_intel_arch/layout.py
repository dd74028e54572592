"""The resolved shape of one Intel PMU (host hardware or a guest configuration).

CPUID, the MSR map and the perf driver's view all derive from this one record, so a guest
configured smaller than its host sees a consistent PMU everywhere (KVM `intel_pmu_refresh`
derives its MSR validity from the guest CPUID the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vpmu_core.api import EventKind

# IA32_PERF_CAPABILITIES bits (SDM Vol. 4 Table 2-2; Linux msr-index.h PERF_CAP_*).
PERF_CAP_LBR_FMT = 0x3F
PERF_CAP_FW_WRITE = 1 << 13
PERF_CAP_PERF_METRICS = 1 << 15


@dataclass(frozen=True)
class PmuLayout:
    """What one PMU has. `counted` maps umask<<8|event to the Work kind for every
    architectural event the *host* counts: KVM programs guest events on the host, so an
    event hidden from a guest by CPUID.0AH:EBX still counts (KVM pmu.c has no EBX check)."""

    version: int
    n_gp: int
    n_fixed: int
    gp_width: int
    fixed_width: int
    full_width: bool
    pdcm: bool
    perf_caps: int
    perf_metrics: bool
    #: EVTSEL/FIXED_CTR_CTRL AnyThread bit writable (v3+, not deprecated, never for KVM guests)
    anythread: bool
    #: CPUID.0AH:EAX[31:24], the length of the EBX architectural-event vector
    arch_events_len: int
    #: CPUID.0AH:EBX as the guest sees it (bit n set = event n "unavailable")
    unavailable_events: int = 0
    counted: dict[int, EventKind] = field(default_factory=dict)
    lbr: bool = False
    arch_lbr: bool = False
    guest: bool = False

    @property
    def gp_mask(self) -> int:
        return (1 << self.n_gp) - 1

    @property
    def fixed_mask(self) -> int:
        """Bits 32+i of the fixed counters (GLOBAL_CTRL layout, SDM Vol. 3B 20.2.2)."""
        return ((1 << self.n_fixed) - 1) << 32

    @property
    def counter_mask(self) -> int:
        return self.gp_mask | self.fixed_mask
