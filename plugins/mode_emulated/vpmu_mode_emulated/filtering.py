"""Whether KVM lets a counter count: enables and the KVM_SET_PMU_EVENT_FILTER filter.

arch/x86/kvm/pmu.c `pmc_event_is_allowed` = globally enabled && locally enabled &&
`check_pmu_event_filter`. The filter is consulted at every reprogram with the current
config; a denied counter's event is left paused (its count frozen) and the guest is told
nothing. The filter semantics themselves (masked entries, fixed bitmap) live in the core's
`vpmu_core.hv.filter`, shared by every mode.
"""

from __future__ import annotations

from typing import Any

from vpmu_core.api import FIXED_BASE, Pmc


def filter_allows(vcpu: Any, pmc: Pmc) -> bool:
    """`check_pmu_event_filter`: GP counters by event select + unit mask, fixed counters by
    the fixed-counter bitmap; no filter allows everything."""
    flt = vcpu.vm.filter
    if flt is None:
        return True
    if pmc.is_fixed:
        return flt.fixed_allowed(pmc.idx - FIXED_BASE)
    return flt.gp_allowed(pmc.config)


def pmc_event_is_allowed(vcpu: Any, pmc: Pmc) -> bool:
    """`pmc_event_is_allowed`. `global_en` is always true on a PMU without a global control
    (Intel v1, AMD before PerfMonV2), as `pmc_is_globally_enabled` says."""
    return pmc.global_en and pmc.local_en and filter_allows(vcpu, pmc)
