"""The part of the virtual local APIC the PMU needs: the performance-counter LVT entry.

x2APIC MSR 0x834 (SDM Vol. 3A 11.12.1.2 / Table 11-6). Vector bits 7:0, delivery mode
10:8 (NMI = 100b), mask bit 16. Masked at reset (SDM 11.5.1: LVT mask bits set after
reset). Delivering a PMI sets the mask bit (KVM commit a16eb25b09c0 "KVM: x86: Mask LVTPC
when handling a PMI", matching Intel's documented behaviour); the guest clears it.
DESIGN §5 states the masking for every guest; the kernel does it only for Intel-compatible
guest CPUID (`kvm_apic_local_deliver`: `guest_cpuid_is_intel_compatible`), since AMD's APIC
does not mask on overflow. This follows the kernel: a CPU model with
`lvtpc_masked_on_pmi = False` (AMD) keeps its LVTPC unmasked after a PMI.
"""

from __future__ import annotations

from vpmu_core.errors import gp

X2APIC_LVTPC = 0x834
LVT_MASKED = 1 << 16
LVT_VALID = 0x000107FF  # vector, delivery mode, mask (delivery status is read-only)


class LvtPc:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = LVT_MASKED

    @property
    def masked(self) -> bool:
        return bool(self.value & LVT_MASKED)

    @property
    def vector(self) -> int:
        return self.value & 0xFF

    @property
    def is_nmi(self) -> bool:
        return (self.value >> 8) & 0x7 == 0b100

    def write(self, value: int) -> None:
        if value & ~LVT_VALID & 0xFFFFFFFF or value >> 32:
            raise gp("x2APIC LVTPC reserved bits")  # x2APIC: reserved bits #GP (SDM 11.12.1.2)
        self.value = value

    def deliver(self, mask: bool = True) -> bool:
        """True if a PMI is delivered (not masked); then masks the entry if `mask`."""
        if self.masked:
            return False
        if mask:
            self.value |= LVT_MASKED
        return True
