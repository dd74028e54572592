"""CPUID leaves of a model, with subleaves."""

from __future__ import annotations

Regs = tuple[int, int, int, int]


class CpuidTable:
    """(leaf, subleaf) -> (eax, ebx, ecx, edx). Leaves without subleaves use subleaf None,
    which matches any ECX (SDM Vol. 2A CPUID: ECX is ignored for such leaves)."""

    def __init__(self) -> None:
        self._leaves: dict[tuple[int, int | None], Regs] = {}

    def set(self, leaf: int, regs: Regs, subleaf: int | None = None) -> None:
        self._leaves[(leaf, subleaf)] = tuple(r & 0xFFFFFFFF for r in regs)  # type: ignore[assignment]

    def get(self, leaf: int, subleaf: int = 0) -> Regs:
        r = self._leaves.get((leaf, subleaf))
        if r is None:
            r = self._leaves.get((leaf, None))
        return r if r is not None else (0, 0, 0, 0)

    def update_bits(self, leaf: int, subleaf: int | None, reg: int, set_mask: int = 0, clear_mask: int = 0) -> None:
        key = (leaf, subleaf)
        regs = list(self._leaves.get(key, (0, 0, 0, 0)))
        regs[reg] = (regs[reg] & ~clear_mask) | set_mask
        self._leaves[key] = tuple(regs)  # type: ignore[assignment]

    def copy(self) -> CpuidTable:
        t = CpuidTable()
        t._leaves = dict(self._leaves)
        return t

    def items(self) -> list[tuple[tuple[int, int | None], Regs]]:
        return sorted(self._leaves.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1]))


EAX, EBX, ECX, EDX = range(4)
