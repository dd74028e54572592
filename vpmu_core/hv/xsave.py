"""An XSAVE area holding PMU state components (compacted format, supervisor components).

SDM Vol. 1 13.11-13.12: XSAVES writes XSTATE_BV[i] = XINUSE[i] for requested components;
XRSTORS initializes a requested component whose XSTATE_BV bit is clear.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vpmu_core.errors import gp

XCOMP_BV_COMPACTED = 1 << 63
MSR_IA32_XSS = 0xDA0
CPUID_D1_EAX_XSAVES = 1 << 3  # CPUID.(EAX=0DH,ECX=1):EAX[3] (SDM Vol. 1 13.2)
UD_VECTOR = 6


class Ia32Xss:
    """IA32_XSS (0xDA0), the supervisor-state bitmap XSAVES/XRSTORS use (SDM Vol. 1 13.3).

    KVM common code (arch/x86/kvm/x86.c `kvm_set_msr_common`/`kvm_get_msr_common` case
    MSR_IA32_XSS): the MSR exists for a guest whose CPUID advertises XSAVES (a guest access
    otherwise #GPs), a write with a bit outside the guest's supported XSS (its CPUID.(0DH,1)
    ECX/EDX, `vcpu->arch.guest_supported_xss`) #GPs, a read returns the value. Reset 0.
    Vendor-neutral: the same code serves VMX and SVM guests."""

    __slots__ = ("value", "supported")

    def __init__(self, supported: int) -> None:
        self.value = 0
        self.supported = supported

    @classmethod
    def for_cpuid(cls, table: Any) -> Ia32Xss | None:
        """The register of a vCPU with this CPUID, or None without XSAVES."""
        eax, _, ecx, edx = table.get(0xD, 1)
        if not eax & CPUID_D1_EAX_XSAVES:
            return None
        return cls(ecx | edx << 32)

    def has_msr(self, msr: int) -> bool:
        return msr == MSR_IA32_XSS

    def rdmsr(self, msr: int) -> int:
        return self.value

    def wrmsr(self, msr: int, value: int) -> None:
        if value & ~self.supported:
            raise gp(f"IA32_XSS {value:#x}: unsupported bits {value & ~self.supported:#x}")
        self.value = value


@dataclass
class XsaveArea:
    """`components[i]` is the byte-exact image of state component i."""

    xstate_bv: int = 0
    xcomp_bv: int = XCOMP_BV_COMPACTED
    components: dict[int, bytes] = field(default_factory=dict)

    @property
    def size(self) -> int:
        # legacy region (512) + XSAVE header (64) + components (compacted)
        return 576 + sum(len(b) for b in self.components.values())

    @classmethod
    def save(cls, facilities: Iterable[Any], mask: int) -> XsaveArea:
        area = cls(xcomp_bv=XCOMP_BV_COMPACTED | mask)
        for f in facilities:
            comp = getattr(f, "xsave_component", None)
            if comp is not None and mask >> comp & 1:
                area.components[comp] = f.xsaves()
                if getattr(f, "in_use", True):
                    area.xstate_bv |= 1 << comp
        return area

    def restore(self, facilities: Iterable[Any], mask: int) -> None:
        if not self.xcomp_bv & XCOMP_BV_COMPACTED:
            raise gp("XRSTORS needs the compacted format (XCOMP_BV[63])")
        for f in facilities:
            comp = getattr(f, "xsave_component", None)
            if comp is None or not mask >> comp & 1:
                continue
            if self.xstate_bv >> comp & 1 and comp in self.components:
                f.xrstors(self.components[comp])
            else:
                f.xrstors(b"")  # init configuration
