"""The exit process: background VM-exits interleaved into guest execution.

Inter-exit gaps are exponential in guest cycles (a Poisson process per vCPU: `rate_per_s`
is per second of guest execution, so a mode whose exits cost more fits fewer of them in
the same wall duration), drawn from a per-vCPU `random.Random` seeded from the composition
seed, so runs are reproducible.

Which exits stay in the inner run loop is decided by the reason, as KVM does: a fastpath
exit is one of the reasons the vendor's fastpath handler takes (`FASTPATH_REASONS`, or the
CPU model's `fastpath_exit_reasons`); `fastpath_share` of the background exits are drawn
among the profile's fastpath-capable reasons, the rest among its other reasons.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections import deque
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: a realistic mix for a general Linux server guest (costs.md §8: 5k-15k exits/s/vCPU)
DEFAULT_REASONS = {
    "external_interrupt": 0.35,
    "msr_write": 0.25,  # TSC_DEADLINE / x2APIC ICR: fastpath candidates
    "hlt": 0.15,
    "ept_violation": 0.1,
    "io_instruction": 0.1,
    "cpuid": 0.05,
}
#: exit reasons KVM's VMX fastpath handles (arch/x86/kvm/vmx/vmx.c vmx_exit_handlers_fastpath(),
#: 6.18+: EXIT_REASON_MSR_WRITE (and WRMSRNS immediate), EXIT_REASON_PREEMPTION_TIMER,
#: EXIT_REASON_HLT, EXIT_REASON_INVD). SVM's (svm.c svm_exit_handlers_fastpath(): SVM_EXIT_MSR
#: writes, SVM_EXIT_HLT, SVM_EXIT_INVD) has no preemption timer: AMD models declare theirs as
#: `fastpath_exit_reasons`.
FASTPATH_REASONS = frozenset({"msr_write", "preemption_timer", "hlt", "invd"})
#: what a fastpath (or slow) exit is when the profile names no reason of that kind: the
#: TSC-deadline WRMSR is the common fastpath exit; an external interrupt the common slow one
FALLBACK_FASTPATH_REASON = "msr_write"
FALLBACK_SLOW_REASON = "external_interrupt"


class ExitProfile(BaseModel):
    """Background VM-exits of a vCPU. `rate_per_s=0`: only the exits the guest causes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_s: float = Field(2000.0, ge=0)
    fastpath_share: float = Field(0.3, ge=0, le=1)
    userspace_share: float = Field(0.01, ge=0, le=1)
    reasons: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_REASONS))

    @model_validator(mode="after")
    def _check(self) -> ExitProfile:
        if self.fastpath_share + self.userspace_share > 1:
            raise ValueError("fastpath_share + userspace_share must be <= 1")
        if any(w < 0 for w in self.reasons.values()) or (self.reasons and sum(self.reasons.values()) <= 0):
            raise ValueError("reasons: weights must be >= 0 and not all 0")
        return self


class _ReasonTable:
    """Reasons with cumulative weights, for one weighted draw."""

    __slots__ = ("reasons", "cum")

    def __init__(self, weights: dict[str, float], fallback: str) -> None:
        items = sorted((r, w) for r, w in weights.items() if w > 0) or [(fallback, 1.0)]
        self.reasons = [r for r, _ in items]
        self.cum = list(itertools.accumulate(w for _, w in items))

    def pick(self, u: float) -> str:
        return self.reasons[bisect.bisect_right(self.cum, u * self.cum[-1])]


class ExitProcess:
    """Draws the next background exit: gap in cycles, reason, fastpath, to userspace."""

    __slots__ = ("rng", "mean_gap", "fast_table", "slow_table", "fast", "user", "next_gap", "_pending")

    def __init__(
        self, profile: ExitProfile, freq_hz: int, seed: int, fastpath_reasons: frozenset[str] = FASTPATH_REASONS
    ) -> None:
        self.rng = random.Random(seed)
        self.mean_gap = freq_hz / profile.rate_per_s if profile.rate_per_s > 0 else 0.0
        reasons = profile.reasons
        self.fast_table = _ReasonTable(
            {r: w for r, w in reasons.items() if r in fastpath_reasons}, FALLBACK_FASTPATH_REASON
        )
        self.slow_table = _ReasonTable(
            {r: w for r, w in reasons.items() if r not in fastpath_reasons}, FALLBACK_SLOW_REASON
        )
        self.fast = profile.fastpath_share
        self.user = profile.userspace_share
        self.next_gap = self._draw_gap()
        #: exits drawn ahead and given back (`push_back`), each with the gap drawn after it
        self._pending: deque[tuple[tuple[str, bool, bool], int]] = deque()

    def _draw_gap(self) -> int:
        if self.mean_gap <= 0:
            return 1 << 62
        return max(1, int(self.rng.expovariate(1.0) * self.mean_gap))

    def draw(self) -> tuple[str, bool, bool]:
        """The exit that is due now: (reason, fastpath, to_userspace); re-arms the gap.
        The path is drawn first, then a reason of that path."""
        if self._pending:
            (reason, fastpath, userspace), self.next_gap = self._pending.popleft()
            return reason, fastpath, userspace
        rng = self.rng
        u = rng.random()
        fastpath = u < self.fast
        userspace = (not fastpath) and u < self.fast + self.user
        reason = (self.fast_table if fastpath else self.slow_table).pick(rng.random())
        self.next_gap = self._draw_gap()
        return reason, fastpath, userspace

    def push_back(self, drawn: list[tuple[tuple[str, bool, bool], int]], gap_before: int) -> None:
        """Give back exits drawn ahead (the fast-forward planner looked further than it ran),
        in draw order, each with the gap drawn after it; `gap_before` is the gap before the
        first. The next draws return them again, so the random stream is consumed exactly as
        if they had never been drawn early."""
        self._pending.extendleft(reversed(drawn))
        self.next_gap = gap_before

    # ---- drawing ahead in bulk (the fast-forward planner) ----------------------------------
    def exit_table(self) -> list[tuple[str, bool, bool]]:
        """Every exit this process can draw, indexed by the codes `peek` returns."""
        return (
            [(r, True, False) for r in self.fast_table.reasons]
            + [(r, False, False) for r in self.slow_table.reasons]
            + [(r, False, True) for r in self.slow_table.reasons]
        )

    def peek(self, m: int) -> tuple[Any, list[int]]:
        """The next `m` exits (codes into `exit_table()`) and the gap drawn after each,
        without consuming them. The values are those `m` draws would give: the same 32-bit
        words of the same Mersenne Twister (`getrandbits(32 * k)` on a copy of the generator
        yields them in order), `random()` = ((a >> 5) * 2**26 + (b >> 6)) / 2**53 in the same
        float operations, and gaps equal to `_draw_gap`'s (`exact_gaps`)."""
        import numpy as np

        if self._pending:
            raise ValueError("peek with exits given back")
        twin = _TWIN
        twin.setstate(self.rng.getstate())
        raw = twin.getrandbits(192 * m).to_bytes(24 * m, "little")
        words = np.frombuffer(raw, dtype="<u4").astype(np.uint64).reshape(m, 3, 2)
        u = ((words[:, :, 0] >> 5).astype(np.float64) * 67108864.0 + (words[:, :, 1] >> 6)) * (1.0 / 9007199254740992.0)
        u_path, u_reason, u_gap = u[:, 0], u[:, 1], u[:, 2]
        fast = u_path < self.fast
        user = ~fast & (u_path < self.fast + self.user)
        ft, st = self.fast_table, self.slow_table
        nf, ns = len(ft.reasons), len(st.reasons)
        fi = np.searchsorted(np.asarray(ft.cum), u_reason * ft.cum[-1], side="right")
        si = np.searchsorted(np.asarray(st.cum), u_reason * st.cum[-1], side="right")
        codes = np.where(fast, fi, nf + si + np.where(user, ns, 0))
        return codes, exact_gaps(u_gap, self.mean_gap)

    def skip(self, n: int, next_gap: int) -> None:
        """Consume the next `n` exits as `n` draws would (after `peek`: six 32-bit words
        each); `next_gap` is the gap drawn after the last of them."""
        if n:
            self.rng.getrandbits(192 * n)
        self.next_gap = next_gap


#: the scratch generator `ExitProcess.peek` copies a process's state into (its state is
#: overwritten on every use; one object spares a construction, which seeds from the OS)
_TWIN = random.Random(0)
#: `exact_gaps` recomputes a gap with Python's log where numpy's product lies closer than
#: this (relative) to an integer: numpy's log may differ from the C library's by an ulp or
#: so, and only next to an integer can that move the truncated gap
_GAP_MARGIN = 1e-9


def exact_gaps(u: Any, mean: float) -> list[int]:
    """`max(1, int(-log(1.0 - x) * mean))` for each x of the float array `u`, as
    `ExitProcess._draw_gap` computes it from `random.expovariate(1.0)` (whose division by
    1.0 is exact), bit for bit. numpy's log is not the C library's (it differs by an ulp in
    about 0.3% of inputs), so the truncation is vectorized and every value whose product
    lies within `_GAP_MARGIN` of an integer, where an ulp could change it, is recomputed
    with `math.log`."""
    import numpy as np

    log = math.log
    if mean * 40.0 >= 2.0**62:  # -log(1 - x) <= 36.8: products this large overflow int64
        return [max(1, int(-log(1.0 - x) * mean)) for x in u.tolist()]
    x = 1.0 - u
    p = -np.log(x) * mean
    g = p.astype(np.int64)  # truncation, as int(): the products are >= 0
    near = np.flatnonzero(np.minimum(p - g, g + 1 - p) <= p * _GAP_MARGIN)
    if near.size:
        for i in near.tolist():
            g[i] = int(-log(float(x[i])) * mean)
    return np.maximum(g, 1).tolist()
