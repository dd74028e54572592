"""The exit process: background VM-exits interleaved into guest execution.

Inter-exit gaps are exponential in guest cycles (a Poisson process per vCPU), drawn from a
per-vCPU `random.Random` seeded from the composition seed, so runs are reproducible.
"""

from __future__ import annotations

import bisect
import itertools
import random

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
#: exit reasons KVM can handle in its fastpath (vmx.c handle_fastpath_*)
FASTPATH_REASONS = frozenset({"msr_write", "preemption_timer", "hlt", "invd"})


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


class ExitProcess:
    """Draws the next background exit: gap in cycles, reason, fastpath, to userspace."""

    __slots__ = ("rng", "mean_gap", "reasons", "weights", "cum", "fast", "user", "next_gap")

    def __init__(self, profile: ExitProfile, freq_hz: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.mean_gap = freq_hz / profile.rate_per_s if profile.rate_per_s > 0 else 0.0
        self.reasons = sorted(profile.reasons) or ["external_interrupt"]
        self.weights = [profile.reasons.get(r, 1.0) for r in self.reasons]
        self.cum = list(itertools.accumulate(self.weights))
        self.fast = profile.fastpath_share
        self.user = profile.userspace_share
        self.next_gap = self._draw_gap()

    def _draw_gap(self) -> int:
        if self.mean_gap <= 0:
            return 1 << 62
        return max(1, int(self.rng.expovariate(1.0) * self.mean_gap))

    def consume(self, cycles: int) -> None:
        self.next_gap -= cycles

    def draw(self) -> tuple[str, bool, bool]:
        """The exit that is due now: (reason, fastpath, to_userspace); re-arms the gap."""
        rng = self.rng
        reason = self.reasons[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]
        u = rng.random()
        fastpath = u < self.fast
        userspace = (not fastpath) and u < self.fast + self.user
        self.next_gap = self._draw_gap()
        return reason, fastpath, userspace
