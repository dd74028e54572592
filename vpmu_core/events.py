"""Event kinds and `Work`: a span of execution with its exact event counts.

Counting is event-driven: counters accrue whole spans, never single cycles. `Work.slice`
cuts a span proportionally with cumulative integer arithmetic so that slices always add
up exactly to the whole (the engine cuts spans at VM-exits, preemption and timers).
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import IntEnum


class EventKind(IntEnum):
    """What a span of work can be counted by. Order follows the architectural events of
    CPUID.0AH:EBX (SDM Vol. 3B 20.2.1.2 / Table 20-1) where one exists."""

    CYCLES = 0
    INSTRUCTIONS = 1
    REF_CYCLES = 2
    LLC_REFERENCES = 3
    LLC_MISSES = 4
    BRANCHES = 5
    BRANCH_MISSES = 6
    TOPDOWN_SLOTS = 7
    TOPDOWN_BE_BOUND = 8
    TOPDOWN_BAD_SPEC = 9
    TOPDOWN_FE_BOUND = 10
    TOPDOWN_RETIRING = 11
    LBR_INSERTS = 12


N_KINDS = len(EventKind)

#: one retired instruction of one cycle (the counting-window unit)
ONE_INSTRUCTION = (1, 1, 1) + (0,) * (N_KINDS - 3)
#: an instruction KVM emulates: it retires in the guest but takes no guest cycles
EMULATED_INSTRUCTION = (0, 1) + (0,) * (N_KINDS - 2)

KIND_NAMES = {k: k.name.lower() for k in EventKind}
_FIELDS = (
    "cycles",
    "instructions",
    "ref_cycles",
    "llc_references",
    "llc_misses",
    "branches",
    "branch_misses",
    "topdown_slots",
    "topdown_be_bound",
    "topdown_bad_spec",
    "topdown_fe_bound",
    "topdown_retiring",
    "lbr_inserts",
)
assert len(_FIELDS) == N_KINDS


class Work:
    """A span of execution: counts per `EventKind`, a CPL (0 = kernel, 3 = user).

    `cycles` defaults to `instructions` (IPC 1) and `ref_cycles` to `cycles`, so a span
    always takes time. `lbr_inserts` defaults to `branches` (every retired branch is an
    LBR insert while LBRs are on). Whether it runs in guest or host mode is decided by who
    executes it (a task or a vCPU), not by the span.
    """

    __slots__ = ("counts", "cpl")

    def __init__(
        self,
        instructions: int = 0,
        cycles: int | None = None,
        ref_cycles: int | None = None,
        branches: int = 0,
        branch_misses: int = 0,
        llc_references: int = 0,
        llc_misses: int = 0,
        topdown_slots: int = 0,
        topdown_be_bound: int = 0,
        topdown_bad_spec: int = 0,
        topdown_fe_bound: int = 0,
        topdown_retiring: int = 0,
        lbr_inserts: int | None = None,
        cpl: int = 0,
    ) -> None:
        if cycles is None:
            cycles = instructions
        if ref_cycles is None:
            ref_cycles = cycles
        if lbr_inserts is None:
            lbr_inserts = branches
        counts = (
            cycles,
            instructions,
            ref_cycles,
            llc_references,
            llc_misses,
            branches,
            branch_misses,
            topdown_slots,
            topdown_be_bound,
            topdown_bad_spec,
            topdown_fe_bound,
            topdown_retiring,
            lbr_inserts,
        )
        for name, value in zip(_FIELDS, counts):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"Work.{name} must be a non-negative int, got {value!r}")
        if cpl not in (0, 1, 2, 3):
            raise ValueError(f"Work.cpl must be 0..3, got {cpl!r}")
        self.counts: tuple[int, ...] = counts
        self.cpl = cpl

    @classmethod
    def from_counts(cls, counts: tuple[int, ...], cpl: int) -> Work:
        w = cls.__new__(cls)
        w.counts = counts
        w.cpl = cpl
        return w

    @property
    def cycles(self) -> int:
        return self.counts[0]

    def __getattr__(self, name: str) -> int:
        try:
            return self.counts[_FIELDS.index(name)]
        except ValueError:
            raise AttributeError(name) from None

    def count(self, kind: EventKind) -> int:
        return self.counts[kind]

    def as_dict(self) -> dict[str, int]:
        return {f: c for f, c in zip(_FIELDS, self.counts) if c}

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v}" for k, v in self.as_dict().items())
        return f"Work({body}, cpl={self.cpl})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Work) and self.counts == other.counts and self.cpl == other.cpl

    def __hash__(self) -> int:
        return hash((self.counts, self.cpl))


class WorkCursor:
    """Consumes a `Work` span in cycle-sized slices whose counts add up exactly to the span.

    Hot path: only the non-zero kinds are computed."""

    __slots__ = ("work", "total", "done", "_prev", "_nz", "_counts")

    def __init__(self, work: Work) -> None:
        self.work = work
        self.total = work.counts[0]
        self.done = 0
        self._counts = work.counts
        self._nz = tuple(i for i, c in enumerate(work.counts) if c)
        self._prev = [0] * N_KINDS

    @property
    def remaining(self) -> int:
        return self.total - self.done

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def take(self, cycles: int) -> tuple[int, ...]:
        """Counts of the next `cycles` cycles (the last slice takes all that is left)."""
        total = self.total
        done = self.done + cycles
        prev = self._prev
        counts = self._counts
        out = [0] * N_KINDS
        if done >= total or total == 0:
            done = total
            for i in self._nz:
                out[i] = counts[i] - prev[i]
                prev[i] = counts[i]
        else:
            for i in self._nz:
                cur = counts[i] * done // total
                out[i] = cur - prev[i]
                prev[i] = cur
        self.done = done
        return tuple(out)

    def rewind(self, done: int) -> None:
        """Move back to `done` cycles into the span (a slice was taken too far: the engine
        cuts it at the first counter overflow). Counts are a function of the position, so
        re-taking gives exactly what a shorter take would have."""
        self.done = done
        total = self.total
        prev = self._prev
        counts = self._counts
        for i in self._nz:
            prev[i] = counts[i] * done // total if total else 0


def split_counts(counts: tuple[int, ...], cycles: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Split span counts at `cycles` (proportional, floor): the two parts add up exactly."""
    total = counts[0]
    head = tuple(c * cycles // total for c in counts)
    return head, tuple(c - h for c, h in zip(counts, head, strict=True))


def iter_slices(work: Work, step: int) -> Iterator[tuple[int, ...]]:
    cur = WorkCursor(work)
    while not cur.finished:
        yield cur.take(step)
