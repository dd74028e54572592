"""What KVM offers a guest PMU at most (`kvm_pmu_cap`): the KVM policy both modes share.

`kvm_init_pmu_capability()` (arch/x86/kvm/pmu.c) starts from the host's perf capabilities
and lowers them to what KVM supports, for the perf-based (emulated) vPMU and for the
mediated vPMU alike:

- ``kvm_pmu_cap.version = min(kvm_pmu_cap.version, 2)``: KVM_GET_SUPPORTED_CPUID reports a
  version 2 architectural PMU, whatever the host has; the mediated merge for 7.0 left this
  line unchanged;
- ``num_counters_fixed = min(num_counters_fixed, KVM_MAX_NR_FIXED_COUNTERS)`` with
  ``KVM_MAX_NR_INTEL_FIXED_COUNTERS 3`` (pmu.h): no guest gets fixed counter 3 (topdown
  slots), also under the mediated vPMU; `intel_pmu_refresh()` takes the min of the guest's
  CPUID.0AH:EDX[4:0] with it.

`GuestPmuConfig()` (every field None) means "what KVM gives this guest": the host model's
PMU lowered to these caps; an explicit value is clamped the same way. Vendor-neutral: the
vendor's `resolve_guest` then applies its own rules (e.g. v1 has no fixed counters).

Deviation, named: KVM does not rewrite a version above 2 that userspace writes into the
guest's CPUID.0AH:EAX[7:0] (`intel_pmu_refresh()` stores `eax.split.version_id` as given);
it just emulates nothing beyond v2 for it (no GLOBAL_STATUS_SET/INUSE, GLOBAL_STATUS bits
58-61 reserved). The model clamps the number to the cap instead, so such a guest reads
version 2 in CPUID, which is what it effectively gets (DESIGN §5). The one behaviour that
differs: for a CPUID version >= 4, `intel_pmu_deliver_pmi()` skips even the legacy LBR
freeze; the model's clamped guest does the v2 freeze.

A mode may lift the version cap with an explicit option that models an unmerged series
(`KvmPmuCaps(max_version=5)`: "KVM: x86/pmu: Upgrade vPMU version to 5").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vpmu_core.hv.config import GuestPmuConfig

#: kvm_init_pmu_capability(): kvm_pmu_cap.version = min(kvm_pmu_cap.version, 2)
KVM_MAX_PMU_VERSION = 2
#: arch/x86/kvm/pmu.h KVM_MAX_NR_INTEL_FIXED_COUNTERS (KVM_MAX_NR_FIXED_COUNTERS)
KVM_MAX_NR_FIXED_COUNTERS = 3
#: the version the unmerged "Upgrade vPMU version to 5" series advertises
UPGRADE_V5_VERSION = 5


@dataclass(frozen=True)
class KvmPmuCaps:
    """`kvm_pmu_cap` as far as the guest's shape goes (see the module docstring)."""

    max_version: int = KVM_MAX_PMU_VERSION
    max_fixed: int = KVM_MAX_NR_FIXED_COUNTERS

    def limit(self, cfg: GuestPmuConfig) -> GuestPmuConfig:
        """Clamp a resolved guest config (no Nones in version/fixed) to these caps."""
        update: dict[str, int] = {}
        if cfg.version is not None and cfg.version > self.max_version:
            update["version"] = self.max_version
        if cfg.fixed_counters is not None and cfg.fixed_counters > self.max_fixed:
            update["fixed_counters"] = self.max_fixed
        return cfg.model_copy(update=update) if update else cfg


#: what mainline KVM 7.0 gives, in both modes
KVM_7_0 = KvmPmuCaps()


#: Legacy PMU MSRs that KVM's common code answers when the vendor vPMU does not claim them
#: (arch/x86/kvm/x86.c kvm_set_msr_common/kvm_get_msr_common: MSR_K7_EVNTSEL0..3,
#: MSR_K7_PERFCTR0..3, MSR_P6_PERFCTR0..1, MSR_P6_EVNTSEL0..1 -> if !kvm_pmu_is_valid_msr(),
#: reads return 0 and writes are dropped, no #GP). Selftest pmu_counters_test relies on it:
#: "KVM drops writes to MSR_P6_PERFCTR[0|1] if the counters are unsupported".
KVM_COMMON_PMU_MSRS = frozenset((0xC1, 0xC2, 0x186, 0x187, *range(0xC001_0000, 0xC001_0008)))
