"""CPUID of the AMD models, host and guest, and the decoding the perf driver uses.

Bits: ../shared/facts/x86-pmu-registers.md §5.1 (Linux cpufeatures.h word 6 =
0x80000001.ECX, `union cpuid_0x80000022_ebx`). Counter count: PerfMonV2 => 0x80000022
EBX[3:0]; else PerfCtrExtCore => 6; else 4 (Linux `amd_pmu_init`, KVM `amd_pmu_refresh`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vpmu_core.api import CpuidTable, Regs

# "AuthenticAMD" as EBX, EDX, ECX of leaf 0 / 0x80000000
_VENDOR = (0x68747541, 0x69746E65, 0x444D4163)  # "Auth", "enti", "cAMD"

EXT_LEAF = 0x80000001
EXT_PMU_LEAF = 0x80000022
ECX_SVM = 1 << 2
ECX_PERFCTR_CORE = 1 << 23  # PerfCtrExtCore
LEAF1_ECX_HYPERVISOR = 1 << 31
EAX_PERFMON_V2 = 1 << 0
EBX_NUM_CORE_PMC = 0xF
K7_COUNTERS = 4
EXT_CORE_COUNTERS = 6


def family_signature(family: int, model: int, stepping: int) -> int:
    """Leaf 1 EAX: family above 0xF goes to ExtFamily, model's high nibble to ExtModel."""
    base_fam = min(family, 0xF)
    ext_fam = family - 0xF if family > 0xF else 0
    return (ext_fam << 20) | ((model >> 4) << 16) | (base_fam << 8) | ((model & 0xF) << 4) | (stepping & 0xF)


def build_table(
    *,
    family: int,
    model: int,
    stepping: int,
    max_basic: int,
    max_ext: int,
    ext_core: bool,
    perfmon_v2: bool,
    n_counters: int,
    guest: bool,
) -> CpuidTable:
    """The leaves a PMU driver looks at. A guest table has the hypervisor bit and no SVM
    (nested SVM is not modelled)."""
    t = CpuidTable()
    t.set(0, (max_basic, _VENDOR[0], _VENDOR[2], _VENDOR[1]))
    t.set(1, (family_signature(family, model, stepping), 0, LEAF1_ECX_HYPERVISOR if guest else 0, 0))
    t.set(0x80000000, (max_ext, _VENDOR[0], _VENDOR[2], _VENDOR[1]))
    ecx = (0 if guest else ECX_SVM) | (ECX_PERFCTR_CORE if ext_core else 0)
    t.set(EXT_LEAF, (0, 0, ecx, 0))
    if max_ext >= EXT_PMU_LEAF:
        eax = EAX_PERFMON_V2 if perfmon_v2 else 0
        ebx = (n_counters & EBX_NUM_CORE_PMC) if perfmon_v2 else 0
        t.set(EXT_PMU_LEAF, (eax, ebx, 0, 0), subleaf=0)
    return t


@dataclass(frozen=True)
class PmuEnumeration:
    """What CPUID says about the core PMU (what the Linux driver computes at init)."""

    family: int
    n_counters: int
    ext_core: bool
    perfmon_v2: bool

    @property
    def zen(self) -> bool:
        """Family 17h+ event tables and constraints apply."""
        return self.family >= 0x17


def enumerate_pmu(fn: Callable[[int, int], Regs]) -> PmuEnumeration:
    """Read the PMU enumeration through a `cpuid(leaf, subleaf)` callable (a port's)."""
    eax1 = fn(1, 0)[0]
    family = (eax1 >> 8) & 0xF
    if family == 0xF:
        family += (eax1 >> 20) & 0xFF
    max_ext = fn(0x80000000, 0)[0]
    ext_core = bool(fn(EXT_LEAF, 0)[2] & ECX_PERFCTR_CORE) if max_ext >= EXT_LEAF else False
    v2 = False
    n = EXT_CORE_COUNTERS if ext_core else K7_COUNTERS
    if max_ext >= EXT_PMU_LEAF:
        eax, ebx, _, _ = fn(EXT_PMU_LEAF, 0)
        if eax & EAX_PERFMON_V2:
            v2 = True
            n = ebx & EBX_NUM_CORE_PMC
    return PmuEnumeration(family=family, n_counters=n, ext_core=ext_core, perfmon_v2=v2)
