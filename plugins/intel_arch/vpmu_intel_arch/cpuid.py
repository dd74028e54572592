"""CPUID leaves of an Intel model, derived from a `PmuLayout` (host or guest).

Only the leaves a PMU user reads are modelled: 0x0 (vendor, max leaf), 0x1 (signature,
PDCM), 0x7 (Arch LBR flag), 0xA (architectural PMU), 0xD (XSAVE of the Arch LBR
component) and 0x1C (Arch LBR capabilities).
"""

from __future__ import annotations

from typing import Any

from vpmu_core.api import CpuidTable
from vpmu_intel_arch.layout import PmuLayout

# "GenuineIntel" in EBX, EDX, ECX (SDM Vol. 2A CPUID leaf 0).
_GENUINE_INTEL = (0x756E6547, 0x6C65746E, 0x49656E69)  # ebx, ecx, edx
CPUID1_ECX_PDCM = 1 << 15  # SDM Vol. 2A Table 3-10: Perfmon and Debug Capability
CPUID1_ECX_X2APIC = 1 << 21  # the guest programs its LVTPC through x2APIC MSR 0x834
CPUID1_ECX_HYPERVISOR = 1 << 31  # set by KVM for guests (kvm_set_cpuid: X86_FEATURE_HYPERVISOR)
CPUID7_EDX_ARCH_LBR = 1 << 19  # X86_FEATURE_ARCH_LBR = 18*32+19 (cpufeatures.h)
CPUID_A_EDX_ANYTHREAD_DEPRECATED = 1 << 15  # SDM Vol. 3B 20.2.5 (v5)
XFEATURE_LBR = 15  # XSAVE component 15 (asm/fpu/types.h)


def leaf_a(layout: PmuLayout) -> tuple[int, int, int, int]:
    """CPUID.0AH (SDM Vol. 3B 20.2; Linux `union cpuid10_eax/ebx/edx`)."""
    if layout.version == 0:
        return (0, 0, 0, 0)  # version 0: no architectural PMU (KVM: pmu->version = 0)
    ebx_len = layout.arch_events_len
    eax = layout.version | layout.n_gp << 8 | layout.gp_width << 16 | ebx_len << 24
    # EBX bit n = 1 means event n is NOT available: every event within the length is on the
    # host; a guest's CPUID may hide some (KVM_SET_CPUID2), which KVM does not enforce.
    ebx = layout.unavailable_events & ((1 << ebx_len) - 1)
    ecx = 0
    edx = 0
    if layout.version >= 2:
        edx = layout.n_fixed | layout.fixed_width << 5
        if layout.version >= 5:
            # v5: ECX is the fixed-counter bitmask (FxCtr[i] := ECX[i] || EDX[4:0] > i).
            ecx = (1 << layout.n_fixed) - 1
            if not layout.anythread:
                edx |= CPUID_A_EDX_ANYTHREAD_DEPRECATED
    if layout.guest:
        # KVM (cpuid.c __do_cpuid_func leaf 0xA): "if (kvm_pmu_cap.version)
        # edx.split.anythread_deprecated = 1", ECX = 0 (no fixed-counter bitmask before the
        # v5 series, which a v5 guest here models).
        edx |= CPUID_A_EDX_ANYTHREAD_DEPRECATED
    return (eax, ebx, ecx, edx)


def build_cpuid(layout: PmuLayout, signature: int, max_leaf: int, features: dict[str, Any]) -> CpuidTable:
    """The CPUID table a host (layout.guest False) or a guest sees."""
    t = CpuidTable()
    ebx, ecx, edx = _GENUINE_INTEL
    t.set(0x0, (max_leaf, ebx, ecx, edx))
    ecx1 = CPUID1_ECX_X2APIC
    if layout.pdcm:
        ecx1 |= CPUID1_ECX_PDCM
    if layout.guest:
        ecx1 |= CPUID1_ECX_HYPERVISOR
    t.set(0x1, (signature, 0, ecx1, 0))
    t.set(0x7, (0, 0, 0, CPUID7_EDX_ARCH_LBR if layout.arch_lbr else 0), subleaf=0)
    t.set(0xA, leaf_a(layout))
    arch = features.get("arch_lbr")
    if layout.arch_lbr and arch:
        depths = 0
        for d in arch["depths"]:
            depths |= 1 << (d // 8 - 1)  # CPUID.1CH:EAX[7:0]: bit n => depth 8*(n+1)
        caps = int(bool(arch.get("cpl_filter"))) | int(bool(arch.get("branch_filter"))) << 1
        caps |= int(bool(arch.get("call_stack"))) << 2
        t.set(0x1C, (depths, caps, int(arch.get("record_caps", 0)), 0))
        # XSAVES support for component 15: CPUID.(0DH,1).ECX[15] and its size (SDM 13.2).
        t.set(0xD, (0, 0, 1 << XFEATURE_LBR, 0), subleaf=1)
        t.set(0xD, (int(arch["xsave_size"]), 0, 1, 0), subleaf=XFEATURE_LBR)
    return t
