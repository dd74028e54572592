"""KVM_SET_PMU_EVENT_FILTER semantics (arch/x86/kvm/pmu.c, include/uapi/linux/kvm.h).

Non-masked events become masked entries with umask_mask 0xFF (exact event+umask match);
entries with bits other than event select + umask are silently skipped
(`convert_to_masked_filter`). A masked entry: bits 7:0 + 35:32 event select, 15:8 umask
match, 55 exclude, 63:56 umask mask. GP decision (`is_gp_event_allowed`): if some include
entry matches and no exclude entry matches -> allowed iff ALLOW; else allowed iff DENY.
Fixed counters (`is_fixed_event_allowed`): DENY + bit set -> denied; ALLOW + bit clear ->
denied. At most 300 events (KVM_PMU_EVENT_FILTER_MAX_EVENTS), else -E2BIG.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_EVENTS = 300
EVENT_SELECT_MASK = 0x0000_000F_0000_00FF
UMASK_SHIFT = 8
MASKED_EXCLUDE = 1 << 55
MASKED_VALID = EVENT_SELECT_MASK | (0xFF << 8) | MASKED_EXCLUDE | (0xFF << 56)


def event_select(eventsel: int) -> int:
    return eventsel & EVENT_SELECT_MASK


@dataclass(frozen=True)
class MaskedEntry:
    event: int
    umask_match: int
    umask_mask: int
    exclude: bool

    def matches(self, eventsel: int) -> bool:
        if event_select(eventsel) != self.event:
            return False
        umask = (eventsel >> UMASK_SHIFT) & 0xFF
        return (umask & self.umask_mask) == self.umask_match


@dataclass(frozen=True)
class PmuEventFilter:
    action: str  # "allow" | "deny"
    entries: tuple[MaskedEntry, ...]
    fixed_counter_bitmap: int

    @classmethod
    def build(cls, action: str, events: list[int], fixed_counter_bitmap: int, masked: bool) -> PmuEventFilter:
        if action not in ("allow", "deny"):
            raise ValueError(f"action must be 'allow' or 'deny', got {action!r}")
        if len(events) > MAX_EVENTS:
            raise ValueError(f"at most {MAX_EVENTS} events (E2BIG)")
        entries = []
        for e in events:
            if masked:
                if e & ~MASKED_VALID:
                    raise ValueError(f"masked entry {e:#x} has invalid bits")  # -EINVAL
                entries.append(
                    MaskedEntry(event_select(e), (e >> 8) & 0xFF, (e >> 56) & 0xFF, bool(e & MASKED_EXCLUDE))
                )
            else:
                if e & ~(EVENT_SELECT_MASK | 0xFF00):
                    continue  # silently skipped, as convert_to_masked_filter does
                entries.append(MaskedEntry(event_select(e), (e >> 8) & 0xFF, 0xFF, False))
        return cls(action, tuple(entries), fixed_counter_bitmap)

    def gp_allowed(self, eventsel: int) -> bool:
        include = any(not m.exclude and m.matches(eventsel) for m in self.entries)
        exclude = any(m.exclude and m.matches(eventsel) for m in self.entries)
        if include and not exclude:
            return self.action == "allow"
        return self.action == "deny"

    def fixed_allowed(self, index: int) -> bool:
        bit = bool(self.fixed_counter_bitmap >> index & 1)
        if self.action == "deny" and bit:
            return False
        if self.action == "allow" and not bit:
            return False
        return True
