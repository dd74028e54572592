"""The cost ledger: the host cycles charged, by entity (a vCPU's name or "host") and by
operation, and how many calls each was. The cost *model* (what an operation costs) is in
vpmu_core/costs.py; this is only the books."""

from __future__ import annotations

from collections import defaultdict


class CostLedger:
    """Charges by entity (vCPU name or "host") and operation; counts by operation."""

    def __init__(self) -> None:
        self.cycles: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.calls: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def charge(self, entity: str, op: str, cycles: int, n: int = 1) -> None:
        self.cycles[entity][op] += cycles
        self.calls[entity][op] += n

    def total(self, entity: str) -> int:
        return sum(self.cycles[entity].values())
