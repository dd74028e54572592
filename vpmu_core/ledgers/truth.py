"""Ground truth: what every task and vCPU really executed, kept apart from any counter."""

from __future__ import annotations

from operator import add as _add

from vpmu_core.events import N_KINDS, EventKind

# slot = guest * 2 + user
HOST_KERNEL, HOST_USER, GUEST_KERNEL, GUEST_USER = range(4)


def slot(cpl: int, guest: bool) -> int:
    """The truth slot of work at `cpl` in host or guest mode (the one place this is written)."""
    return (2 if guest else 0) + (0 if cpl == 0 else 1)


class TruthLedger:
    """owner -> 4 slots (host/guest x kernel/user) -> counts per EventKind."""

    def __init__(self) -> None:
        self.owners: dict[str, list[list[int]]] = {}

    def slots(self, owner: str) -> list[list[int]]:
        s = self.owners.get(owner)
        if s is None:
            s = self.owners[owner] = [[0] * N_KINDS for _ in range(4)]
        return s

    @staticmethod
    def add(slots: list[list[int]], counts: tuple[int, ...], cpl: int, guest: bool) -> None:
        row = slots[slot(cpl, guest)]
        row[:] = map(_add, row, counts)

    def total(
        self,
        owner: str,
        kind: EventKind,
        *,
        guest: bool | None = None,
        user: bool | None = None,
    ) -> int:
        s = self.owners.get(owner)
        if s is None:
            return 0
        out = 0
        for slot in range(4):
            g, u = slot >= 2, slot % 2 == 1
            if guest is not None and g != guest:
                continue
            if user is not None and u != user:
                continue
            out += s[slot][kind]
        return out

    def snapshot(self) -> dict[str, list[list[int]]]:
        return {k: [list(r) for r in v] for k, v in sorted(self.owners.items())}
