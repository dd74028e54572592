"""An XSAVE area holding PMU state components (compacted format, supervisor components).

SDM Vol. 1 13.11-13.12: XSAVES writes XSTATE_BV[i] = XINUSE[i] for requested components;
XRSTORS initializes a requested component whose XSTATE_BV bit is clear.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vpmu_core.errors import gp

XCOMP_BV_COMPACTED = 1 << 63


@dataclass
class XsaveArea:
    """`components[i]` is the byte-exact image of state component i."""

    xstate_bv: int = 0
    xcomp_bv: int = XCOMP_BV_COMPACTED
    components: dict[int, bytes] = field(default_factory=dict)

    @property
    def size(self) -> int:
        # legacy region (512) + XSAVE header (64) + components (compacted)
        return 576 + sum(len(b) for b in self.components.values())

    @classmethod
    def save(cls, facilities: Iterable[Any], mask: int) -> XsaveArea:
        area = cls(xcomp_bv=XCOMP_BV_COMPACTED | mask)
        for f in facilities:
            comp = getattr(f, "xsave_component", None)
            if comp is not None and mask >> comp & 1:
                area.components[comp] = f.xsaves()
                if getattr(f, "in_use", True):
                    area.xstate_bv |= 1 << comp
        return area

    def restore(self, facilities: Iterable[Any], mask: int) -> None:
        if not self.xcomp_bv & XCOMP_BV_COMPACTED:
            raise gp("XRSTORS needs the compacted format (XCOMP_BV[63])")
        for f in facilities:
            comp = getattr(f, "xsave_component", None)
            if comp is None or not mask >> comp & 1:
                continue
            if self.xstate_bv >> comp & 1 and comp in self.components:
                f.xrstors(self.components[comp])
            else:
                f.xrstors(b"")  # init configuration
