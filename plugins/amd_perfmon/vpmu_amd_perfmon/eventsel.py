"""The AMD PerfEvtSel (PERF_CTLn) layout and the event encodings this model counts.

Layout: AMD APM Vol. 2 §13.2.1 "PerfEvtSeln", Linux arch/x86/include/asm/perf_event.h
(AMD64_EVENTSEL_*), ../shared/facts/x86-pmu-registers.md §5.3. Encodings: Linux
arch/x86/events/amd/core.c `amd_perfmon_event_map` / `amd_zen1_perfmon_event_map` (§5.5).
Shared by the register model (decoding what software wrote) and the perf driver (encoding
what perf asks for), so both agree on what an encoding counts.
"""

from __future__ import annotations

from vpmu_core.api import EventKind

EVENT_LO = 0xFF  # EventSelect[7:0]
UMASK = 0xFF << 8
USR = 1 << 16
OS = 1 << 17
EDGE = 1 << 18
INT = 1 << 20
EN = 1 << 22
INV = 1 << 23
CMASK = 0xFF << 24
EVENT_HI = 0xF << 32  # EventSelect[11:8]
GUEST_ONLY = 1 << 40
HOST_ONLY = 1 << 41

#: AMD64_EVENTSEL_EVENT: the 12-bit event select split over bits 7:0 and 35:32
EVENT_MASK = EVENT_LO | EVENT_HI
#: AMD64_RAW_EVENT_MASK: what a perf raw config may set (event, umask, edge, inv, cmask)
RAW_EVENT_MASK = EVENT_MASK | UMASK | EDGE | INV | CMASK

#: Bits a physical core PERF_CTL keeps: 35:0 minus 19 and 21, plus GuestOnly/HostOnly.
#: The facts (§5.3, the KVM-x86 comment) say AMD ignores writes to reserved bits, so the
#: physical model drops them silently too instead of raising #GP.
HW_VALID = (0xF_FFFF_FFFF & ~((1 << 19) | (1 << 21))) | GUEST_ONLY | HOST_ONLY
#: KVM svm/pmu.c `amd_pmu_refresh`: pmu->reserved_bits = 0xfffffff000280000 (bits 19, 21,
#: 36-63). Unlike hardware, HostOnly/GuestOnly (40/41) are among them: a guest's writes of
#: HO/GO are silently dropped and read back as 0 (KVM-x86 `kvm_pmu_set_msr` masks, no #GP).
KVM_GUEST_RESERVED = 0xFFFF_FFF0_0028_0000
GUEST_VALID = ~KVM_GUEST_RESERVED & (2**64 - 1)

#: Large Increment per Cycle (Retired SSE/AVX FLOPs) on family 17h+: needs an even counter
#: whose odd neighbour runs the Merge event 0xFFF (Linux `amd_f17h_...` pair constraint).
LARGE_INCREMENT_EVENT = 0x003
MERGE_EVENT = 0xFFF

# (12-bit event, umask) -> kind. Cycles/instructions/branches are the same on every family.
_COMMON: dict[tuple[int, int], EventKind] = {
    (0x076, 0x00): EventKind.CYCLES,
    (0x0C0, 0x00): EventKind.INSTRUCTIONS,
    (0x0C2, 0x00): EventKind.BRANCHES,
    (0x0C3, 0x00): EventKind.BRANCH_MISSES,
}
#: Family 17h+ (Zen): cache-references 0xff60, cache-misses 0x0964 (`amd_zen1_perfmon_event_map`).
ZEN_EVENTS = {**_COMMON, (0x060, 0xFF): EventKind.LLC_REFERENCES, (0x064, 0x09): EventKind.LLC_MISSES}
#: K7 to family 16h: cache-references 0x077d, cache-misses 0x077e (`amd_perfmon_event_map`).
K7_EVENTS = {**_COMMON, (0x07D, 0x07): EventKind.LLC_REFERENCES, (0x07E, 0x07): EventKind.LLC_MISSES}


def event_select(sel: int) -> int:
    """The 12-bit EventSelect of a selector value."""
    return (sel & EVENT_LO) | ((sel >> 24) & 0xF00)


def unit_mask(sel: int) -> int:
    return (sel >> 8) & 0xFF


def encode(event: int, umask: int = 0) -> int:
    """Selector bits for a 12-bit event and a unit mask."""
    return (event & 0xFF) | ((event & 0xF00) << 24) | ((umask & 0xFF) << 8)


def is_exotic(sel: int) -> bool:
    """EDGE, INV or a CMASK change what is counted per cycle; a span model cannot count that
    exactly, so such a counter is marked `Pmc.exotic` and counts nothing (documented gap)."""
    return bool(sel & (EDGE | INV | CMASK))


def event_table(zen: bool) -> dict[tuple[int, int], EventKind]:
    return ZEN_EVENTS if zen else K7_EVENTS


def decode_kind(sel: int, zen: bool) -> EventKind | None:
    """What a selector counts in this model, or None (an event the model does not count)."""
    return event_table(zen).get((event_select(sel), unit_mask(sel)))
