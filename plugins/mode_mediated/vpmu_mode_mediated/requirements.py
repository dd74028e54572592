"""Which hosts can run a mediated vPMU, and the few per-vendor rules KVM keeps in its
vendor code (vmx/pmu_intel.c, svm/pmu.c behind `kvm_pmu_ops`).

Requirements (facts kvm-vpmu.md §2.1, v6 17/44 and 18/44): Intel needs PMU version 4 or
later (GLOBAL_STATUS_SET, MSR 0x391, to restore the guest's overflow bits) and full-width
counter writes (to restore 48-bit counter values); AMD needs PerfMonV2 (version 2: the
global control/status registers and STATUS_SET). Other vendors are judged by the same
capabilities through the role methods: global control, status and a status-set register.
The per-vendor rule is the model's `mediated_pmu_missing()` (KVM's vendor op
`kvm_pmu_ops.is_mediated_pmu_supported`), so no vendor name is tested here.

Composing the mode on a host without them fails with a `ConfigError` naming what is
missing, the way KVM forces `enable_mediated_pmu` off with a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vpmu_core.api import ConfigError


@dataclass(frozen=True)
class VendorRules:
    """What differs between VMX and SVM in the mediated code (KVM `kvm_pmu_ops`)."""

    #: GLOBAL_CTRL switched by VM-entry/exit controls (VMX) instead of WRMSR at load/put (SVM)
    atomic_global_ctrl: bool
    #: global-register roles passed through when the guest PMU matches the host's
    #: (v6 22/44: Intel GLOBAL_CTRL/STATUS/OVF_CTRL; AMD GLOBAL_CTL/STATUS/STATUS_CLR/STATUS_SET)
    passthrough_global_roles: tuple[str, ...]


def check_requirements(model: Any) -> VendorRules:
    """Raise `ConfigError` if the host model cannot run a mediated vPMU; else its rules."""
    pmu = model.make_pmu(None)
    roles = pmu.global_msrs()
    # the vendor op (kvm_pmu_ops.is_mediated_pmu_supported, asked by kvm_init_pmu_capability):
    # a model that has none is judged by its global registers alone
    vendor_check = getattr(model, "mediated_pmu_missing", None)
    missing: list[str] = list(vendor_check()) if vendor_check is not None else []
    for role in ("ctrl", "status", "status_clr", "status_set"):
        if role not in roles and not missing:
            missing.append(f"a global {role.replace('_', '-')} register")
    if missing:
        raise ConfigError(
            "mode",
            f"mediated vPMU is not supported on {model.name}: missing " + "; ".join(missing),
            "intel v4+ with full-width writes (e.g. intel/icelake, intel/sapphirerapids), amd with PerfMonV2 (amd/zen4)",
        )
    if pmu.atomic_global_ctrl_switch:
        return VendorRules(True, ("ctrl", "status", "status_clr"))
    return VendorRules(False, ("ctrl", "status", "status_clr", "status_set"))
