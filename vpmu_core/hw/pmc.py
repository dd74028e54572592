"""One performance-monitoring counter, normalized across vendors (like KVM's `struct kvm_pmc`).

Vendors keep their own register layouts; after every control write they refresh these
normalized fields so the engine, host perf and the modes can work without knowing the
layout. Index convention follows KVM (`arch/x86/kvm/pmu.h`): GP counters 0..31, fixed
counters 32+i, the same bit positions as Intel's PERF_GLOBAL_CTRL.
"""

from __future__ import annotations

from vpmu_core.events import EventKind

FIXED_BASE = 32


class Pmc:
    """A counter: width, value and the decoded meaning of its controls."""

    __slots__ = (
        "idx",
        "width",
        "mask",
        "value",
        "config",
        "event",
        "usr",
        "os",
        "int_en",
        "local_en",
        "global_en",
        "count_host",
        "count_guest",
        "exotic",
    )

    def __init__(self, idx: int, width: int) -> None:
        self.idx = idx
        self.width = width
        self.mask = (1 << width) - 1
        self.value = 0
        #: raw event-select-like config a perf user would program for this counter
        #: (GP: the event selector; fixed: the pseudo encoding, e.g. 0x00c0 for fixed0).
        self.config = 0
        #: decoded event, or None when the encoding counts nothing in this model.
        self.event: EventKind | None = None
        self.usr = False
        self.os = False
        self.int_en = False
        self.local_en = False
        self.global_en = True
        #: whether the counter counts host-mode / guest-mode work, every condition except
        #: local enable and CPL folded in (Intel: the host GLOBAL_CTRL bit, resp. the bit in
        #: the VM-entry-loaded GLOBAL_CTRL; AMD: PerfMonV2 GlobalCtl + HostOnly/GuestOnly + SVME).
        #: A guest-visible PMU sets both to its global enable.
        self.count_host = True
        self.count_guest = True
        #: edge/inv/cmask settings that a span model cannot count exactly (counts nothing).
        self.exotic = False

    @property
    def is_fixed(self) -> bool:
        return self.idx >= FIXED_BASE

    @property
    def enabled(self) -> bool:
        return self.local_en and self.global_en

    def counts_cpl(self, cpl: int) -> bool:
        return self.os if cpl == 0 else self.usr

    def __repr__(self) -> str:
        kind = "fixed" if self.is_fixed else "gp"
        return f"Pmc({kind}{self.idx % FIXED_BASE} value={self.value:#x} ev={self.event} en={self.enabled})"


def sign_extend(value: int, from_bits: int, to_width: int) -> int:
    """Sign-extend `value`'s low `from_bits` bits to `to_width` bits (IA32_PMCx legacy writes)."""
    v = value & ((1 << from_bits) - 1)
    if v >> (from_bits - 1):
        v -= 1 << from_bits
    return v & ((1 << to_width) - 1)


def events_until_overflow(value: int, mask: int) -> int:
    """How many more events make a counter at `value` wrap (overflow happens on the wrap)."""
    return mask + 1 - (value & mask)
