"""XSAVE state component 15 (LBR, supervisor, IA32_XSS bit 15) as a byte-exact object.

Why an object: the layout is `struct arch_lbr_state` (facts §4.6), and its two rules are
what KVM's depth restriction is about, so they are kept next to the bytes:

    +0x00 IA32_LBR_CTL   +0x08 IA32_LBR_DEPTH   +0x10 LER_FROM   +0x18 LER_TO   +0x20 LER_INFO
    +0x28 + 24*i         entries[i] = FROM, TO, INFO     (entry 0 = youngest)

size = 40 + 24 * depth bytes, where depth is the maximum depth CPUID.1CH enumerates (the size
CPUID.(0DH,0FH).EAX reports: 808 bytes at 32; Linux refuses XSAVES if they differ).

* XSAVES writes the current LBR_DEPTH into the DEPTH field and every entry below it
  (entries at or beyond the current depth are written 0).
* XRSTORS loads CTL and the LER MSRs; it **zeroes every record if the saved DEPTH differs
  from the current IA32_LBR_DEPTH** (KVM cover letter, QEMU, Xen: "XRSTORS LBR state
  behaviour depends on MSR_LBR_DEPTH"), else loads the entries. It does not change
  IA32_LBR_DEPTH: the field is the comparison key, which is why Xen writes LBR_DEPTH before
  XRSTORS and why migration sets DEPTH through KVM_SET_MSRS first.
* Initial configuration (XSTATE_BV[15] = 0, `XRSTORS(b"")`): every LBR MSR 0 except
  IA32_LBR_DEPTH, which is unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vpmu_core.api import gp
from vpmu_intel_archlbr.recording import ZERO_ENTRY, Entry

XFEATURE_LBR = 15
XFEATURE_MASK_LBR = 1 << XFEATURE_LBR
HEADER = struct.Struct("<5Q")  # CTL, DEPTH, LER_FROM, LER_TO, LER_INFO
ENTRY = struct.Struct("<3Q")  # FROM, TO, INFO
assert HEADER.size == 0x28 and ENTRY.size == 24


def component_size(depth: int) -> int:
    """Bytes of component 15 for `depth` entries (40 + 24 x depth)."""
    return HEADER.size + ENTRY.size * depth


@dataclass(frozen=True)
class ArchLbrComponent:
    """One saved image of component 15 (`struct arch_lbr_state`)."""

    ctl: int = 0
    depth: int = 0
    ler_from: int = 0
    ler_to: int = 0
    ler_info: int = 0
    entries: tuple[Entry, ...] = field(default_factory=tuple)

    @property
    def size(self) -> int:
        return component_size(len(self.entries))

    def pack(self) -> bytes:
        """The exact bytes XSAVES writes."""
        out = bytearray(HEADER.pack(self.ctl, self.depth, self.ler_from, self.ler_to, self.ler_info))
        for e in self.entries:
            out += ENTRY.pack(*e)
        return bytes(out)

    @classmethod
    def unpack(cls, data: bytes, max_depth: int) -> ArchLbrComponent:
        """Parse an image of `max_depth` entries (#GP on any other length: XRSTORS would
        read a different layout than the one CPUID promises)."""
        if len(data) != component_size(max_depth):
            raise gp(f"LBR component is {len(data)} bytes, CPUID says {component_size(max_depth)}")
        ctl, depth, ler_from, ler_to, ler_info = HEADER.unpack_from(data, 0)
        entries = tuple(ENTRY.unpack_from(data, HEADER.size + ENTRY.size * i) for i in range(max_depth))
        return cls(ctl, depth, ler_from, ler_to, ler_info, entries)

    @classmethod
    def init(cls, depth: int, max_depth: int) -> ArchLbrComponent:
        """The initial configuration: all zero except DEPTH."""
        return cls(depth=depth, entries=(ZERO_ENTRY,) * max_depth)

    def is_init(self) -> bool:
        """XINUSE[15] == 0: CTL, LER and every entry zero (DEPTH does not count)."""
        return not (self.ctl or self.ler_from or self.ler_to or self.ler_info) and all(
            e == ZERO_ENTRY for e in self.entries
        )
