"""The deterministic branch stream and the LBR ring it fills.

Why this shape: the engine hands a facility whole spans of work (`counts`, a CPL and the
owner's stream `position`), never single instructions. A span can hold 10^9 branches, so the
stream is *addressable*: branch ``j`` of the span starting at ``position`` is a pure function
of ``(seed, position, j)`` (splitmix64), and only the branches that can still be in the ring
afterwards are materialised. Outside call-stack mode that is exact: the ring holds the last
``depth`` captured branches whatever came before them. In call-stack mode the last
``CALLSTACK_WINDOW_PER_ENTRY * depth`` branches of the span are replayed (pushes and pops), a
bounded, deterministic stand-in for the full replay.

Addresses are canonical (bits 63:48 sign-extend bit 47, SDM "LBR record layout"): kernel
branches (CPL 0) in the upper half, user branches in the lower half, never 0, so after a long
branchy run every record is non-zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from vpmu_core.api import EventKind

_M64 = (1 << 64) - 1
_CYC = int(EventKind.CYCLES)
_BR = int(EventKind.BRANCHES)
_MISS = int(EventKind.BRANCH_MISSES)
_INS = int(EventKind.LBR_INSERTS)

#: at most this many branches per ring entry are generated when filters drop most of them
SCAN_LIMIT_PER_ENTRY = 64
#: call-stack mode replays this many branches per ring entry at the end of a span
CALLSTACK_WINDOW_PER_ENTRY = 8

KERNEL_TEXT = 0xFFFF_FFFF_8100_0000
USER_TEXT = 0x0000_5555_5555_4000


class BranchType(IntEnum):
    """Branch classes both LBR flavours filter on (LBR_SELECT bits 2-8, LBR_CTL bits 16-22)."""

    COND = 0
    NEAR_REL_JMP = 1
    NEAR_IND_JMP = 2
    NEAR_REL_CALL = 3
    NEAR_IND_CALL = 4
    NEAR_RET = 5
    FAR = 6


CALLS = frozenset({BranchType.NEAR_REL_CALL, BranchType.NEAR_IND_CALL})

#: Arch LBR_x_INFO.BR_TYPE encoding (facts §4.4): 0 COND, 1 JMP ind, 2 JMP dir, 3 CALL ind,
#: 4 CALL dir, 5 RET, 1xxx other
ARCH_BR_TYPE = {
    BranchType.COND: 0,
    BranchType.NEAR_IND_JMP: 1,
    BranchType.NEAR_REL_JMP: 2,
    BranchType.NEAR_IND_CALL: 3,
    BranchType.NEAR_REL_CALL: 4,
    BranchType.NEAR_RET: 5,
    BranchType.FAR: 8,
}

# A plausible mix of branch classes out of 256 (conditional branches dominate real code).
_MIX: tuple[tuple[int, BranchType], ...] = (
    (128, BranchType.COND),
    (160, BranchType.NEAR_REL_JMP),
    (176, BranchType.NEAR_IND_JMP),
    (208, BranchType.NEAR_REL_CALL),
    (216, BranchType.NEAR_IND_CALL),
    (252, BranchType.NEAR_RET),
    (256, BranchType.FAR),
)
_KIND_OF_BYTE = tuple(next(k for lim, k in _MIX if b < lim) for b in range(256))


def splitmix64(x: int) -> int:
    """A fast, well-mixed 64-bit hash (Steele et al.): stable across runs and platforms."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def canonical(addr: int) -> int:
    """Sign-extend bit 47 through 63:48 (a 48-bit linear address as the MSR holds it)."""
    addr &= (1 << 48) - 1
    return addr | (0xFFFF << 48) if addr >> 47 & 1 else addr


def is_canonical(value: int) -> bool:
    return canonical(value) == value


@dataclass(frozen=True, slots=True)
class Branch:
    """One retired branch as an LBR entry sees it."""

    kind: BranchType
    from_ip: int
    to_ip: int
    mispred: bool
    cycles: int


class BranchStream:
    """The branch stream of one owner (a host CPU's tasks or one vCPU), fixed by `seed`."""

    __slots__ = ("seed",)

    def __init__(self, seed: int) -> None:
        self.seed = seed & _M64

    def branch(self, position: int, j: int, cpl: int, miss: int, total: int, cycles: int) -> Branch:
        """Branch `j` of the span that starts at stream `position` (pure function)."""
        h = splitmix64(self.seed ^ splitmix64((position * 0x100000001B3 + j) & _M64))
        kind = _KIND_OF_BYTE[h & 0xFF]
        base = KERNEL_TEXT if cpl == 0 else USER_TEXT
        from_ip = canonical(base + ((h >> 8) & 0xFFFFFF0) + 0x10)
        to_ip = canonical(base + ((h >> 36) & 0xFFFFFF0) + 0x20)
        mispred = total > 0 and (h >> 20) % total < miss
        return Branch(kind, from_ip, to_ip, mispred, cycles)

    def span(
        self,
        counts: tuple[int, ...],
        cpl: int,
        position: int,
        captured: Callable[[BranchType], bool],
        depth: int,
        call_stack: bool,
    ) -> tuple[list[Branch], int]:
        """The captured branches of one span that can still be in a ring of `depth`, oldest
        first, and how many branches of the whole span were captured (exact when the scan
        covers the span or every class is captured, else scaled from the scanned tail).
        `captured(kind)` applies the branch-type filter (CPL is checked by the caller: a span
        has one CPL)."""
        n = counts[_INS] if len(counts) > _INS else counts[_BR]
        if n <= 0 or depth <= 0:
            return [], 0
        miss = min(counts[_MISS], n)
        cycles = max(1, min(0xFFFF, counts[_CYC] // n))
        out: list[Branch] = []
        if call_stack:
            first = max(0, n - CALLSTACK_WINDOW_PER_ENTRY * depth)
            for j in range(first, n):
                b = self.branch(position, j, cpl, miss, n, cycles)
                if captured(b.kind):
                    out.append(b)
            return out, len(out)
        stop = max(0, n - SCAN_LIMIT_PER_ENTRY * depth)
        j = n - 1
        while j >= stop and len(out) < depth:
            b = self.branch(position, j, cpl, miss, n, cycles)
            if captured(b.kind):
                out.append(b)
            j -= 1
        out.reverse()
        scanned = n - 1 - j
        if scanned == n or all(captured(k) for k in BranchType):
            total = len(out) if scanned == n else n
        else:
            total = max(len(out), len(out) * n // scanned)
        return out, total


#: one ring entry: (FROM, TO, INFO) as the MSRs read
Entry = tuple[int, int, int]
ZERO_ENTRY: Entry = (0, 0, 0)


class LbrRing:
    """`depth` physical entries and the top-of-stack index (the youngest entry).

    Legacy LBR exposes the physical slots and TOS; Arch LBR exposes entry i = slot
    (tos - i) mod depth (entry 0 youngest, no TOS MSR). Call-stack mode pushes on CALL and
    pops on RET (TOS moves back; the slot keeps its value, as the hardware ring does).
    """

    __slots__ = ("slots", "tos")

    def __init__(self, depth: int) -> None:
        self.slots: list[Entry] = [ZERO_ENTRY] * depth
        self.tos = 0

    @property
    def depth(self) -> int:
        return len(self.slots)

    def zero(self, depth: int | None = None) -> None:
        """Reset every record (DEPTH write, XRSTORS depth mismatch, init configuration)."""
        self.slots = [ZERO_ENTRY] * (self.depth if depth is None else depth)
        self.tos = 0

    def push(self, entry: Entry) -> None:
        self.tos = (self.tos + 1) % len(self.slots)
        self.slots[self.tos] = entry

    def pop(self) -> None:
        self.tos = (self.tos - 1) % len(self.slots)

    def logical(self, i: int) -> Entry:
        """Arch LBR entry i (0 = youngest)."""
        return self.slots[(self.tos - i) % len(self.slots)]

    def set_logical(self, i: int, entry: Entry) -> None:
        self.slots[(self.tos - i) % len(self.slots)] = entry

    def is_zero(self) -> bool:
        return all(e == ZERO_ENTRY for e in self.slots)

    def fill(self, branches: list[Branch], total: int, encode: Callable[[Branch], Entry], call_stack: bool) -> None:
        """Insert `branches` (oldest first), the last of `total` captured ones (the earlier
        ones only move TOS: their slots are overwritten); in call-stack mode a RET pops."""
        if not call_stack and total > len(branches):
            self.tos = (self.tos + total - len(branches)) % len(self.slots)
        for b in branches:
            if call_stack and b.kind is BranchType.NEAR_RET:
                self.pop()
            else:
                self.push(encode(b))
