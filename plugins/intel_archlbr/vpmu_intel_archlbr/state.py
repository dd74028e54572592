"""What both LBR flavours share: the ring, the branch stream, freeze on PMI, LER MSRs and
the context-switch entry points (FacilityState protocol, vpmu_core/hw/facility.py).

Why a base: recording, freezing and switching are the same mechanism for legacy and Arch
LBR; only the MSR map, the filter encoding and the save format differ (legacy.py, arch.py).

Freeze on PMI (facts §1.7, v4 "streamlined freeze"): with DEBUGCTL.FREEZE_LBRS_ON_PMI set,
a counter overflow of the PMU the state is bound to (`bind`) sets GLOBAL_STATUS.LBR_FRZ
(bit 58) and recording stops until software clears the bit (GLOBAL_OVF_CTRL / STATUS_RESET);
DEBUGCTL.LBR stays set. Where the PMU cannot hold bit 58 (v2-v3), the legacy freeze clears
DEBUGCTL.LBR instead. The overflow is seen at the next span boundary: the engine cuts spans
exactly at overflows, so no branch after it is recorded.
"""

from __future__ import annotations

from typing import Any

from vpmu_core.api import gp
from vpmu_intel_archlbr import switching
from vpmu_intel_archlbr.debugctl import DEBUGCTL_LBR, MSR_IA32_DEBUGCTL, DebugCtl
from vpmu_intel_archlbr.recording import Branch, BranchStream, BranchType, Entry, LbrRing, is_canonical

MSR_LER_FROM = 0x1DD  # IA32_LER_FROM_IP / MSR_LASTINTFROMIP
MSR_LER_TO = 0x1DE  # IA32_LER_TO_IP / MSR_LASTINTTOIP
GLOBAL_STATUS_LBR_FRZ = 1 << 58
#: GLOBAL_STATUS counter overflow bits (GP 0-31, fixed 32-47)
_OVF_BITS = (1 << 48) - 1


class LbrStateBase:
    """One LBR instance (host CPU or vCPU). Subclasses define the MSRs and the filters."""

    resource: str | None = "lbr"
    xsave_component: int | None = None
    name: str = ""

    def __init__(self, guest: bool, depth: int, seed: int, legacy_lbr: bool) -> None:
        self.guest = guest
        self.ring = LbrRing(depth)
        self.stream = BranchStream(seed)
        self.debugctl = DebugCtl(guest, legacy_lbr)
        self.ler_from = 0
        self.ler_to = 0
        #: the PMU whose overflows freeze this LBR (vCPU PMU or host CPU PMU), see `bind`
        self.pmu: Any = None
        self._seen_ovf = 0
        #: guest records lost to an XRSTORS depth mismatch (`switching.switch_in`)
        self.wipes = 0

    def bind(self, pmu: Any, seed: int | None = None) -> None:
        """Attach the PMU for freeze-on-PMI and (re)seed the branch stream."""
        self.pmu = pmu
        self._seen_ovf = _status(pmu) & _OVF_BITS if pmu is not None else 0
        if seed is not None:
            self.stream = BranchStream(seed)

    # ---- enable / freeze ---------------------------------------------------------------
    def _enabled(self) -> bool:
        raise NotImplementedError

    @property
    def frozen(self) -> bool:
        return self.pmu is not None and bool(_status(self.pmu) & GLOBAL_STATUS_LBR_FRZ)

    @property
    def active(self) -> bool:
        """Records right now: enabled (DEBUGCTL.LBR / LBR_CTL.LBREn) and not frozen."""
        return self._enabled() and not self.frozen

    def _pmi_freeze(self) -> bool:
        """True if a new overflow since the last span froze the LBR (see module docstring)."""
        pmu = self.pmu
        if pmu is None:
            return False
        status = _status(pmu)
        new = status & _OVF_BITS & ~self._seen_ovf
        self._seen_ovf = status & _OVF_BITS
        if not new or not self.debugctl.freeze_on_pmi:
            return False
        pmu.set_global_status(status | GLOBAL_STATUS_LBR_FRZ)
        if not _status(pmu) & GLOBAL_STATUS_LBR_FRZ:
            self.debugctl.value &= ~DEBUGCTL_LBR  # pre-v4 freeze: clear DEBUGCTL.LBR
        return True

    # ---- recording ---------------------------------------------------------------------
    def _cpl_captured(self, cpl: int) -> bool:
        raise NotImplementedError

    def _type_captured(self, kind: BranchType) -> bool:
        raise NotImplementedError

    @property
    def call_stack(self) -> bool:
        raise NotImplementedError

    def _encode(self, b: Branch) -> Entry:
        raise NotImplementedError

    def record(self, counts: tuple[int, ...], cpl: int, guest: bool, position: int) -> None:
        """Feed one span (engine, only while `active`): the captured branches of the span,
        filtered by CPL and branch type, fill the ring (push/pop in call-stack mode)."""
        if self._pmi_freeze() or not self._cpl_captured(cpl):
            return
        cs = self.call_stack
        branches, total = self.stream.span(counts, cpl, position, self._type_captured, self.ring.depth, cs)
        self.ring.fill(branches, total, self._encode, cs)

    # ---- MSR helpers -------------------------------------------------------------------
    def _common_rd(self, msr: int) -> int | None:
        if msr == MSR_IA32_DEBUGCTL:
            return self.debugctl.value
        if msr == MSR_LER_FROM:
            return self.ler_from
        if msr == MSR_LER_TO:
            return self.ler_to
        return None

    def _common_wr(self, msr: int, value: int) -> bool:
        if msr == MSR_IA32_DEBUGCTL:
            self.debugctl.write(value)
            return True
        if msr in (MSR_LER_FROM, MSR_LER_TO):
            _canonical(msr, value)
            if msr == MSR_LER_FROM:
                self.ler_from = value
            else:
                self.ler_to = value
            return True
        return False

    # ---- context switch (modes) ----------------------------------------------------------
    def switch_cost(self, direction: switching.Direction, costs: Any) -> int:
        """Host cycles to save or restore this state once (see switching.py)."""
        return switching.switch_cost(self, direction, costs)

    def summary(self) -> dict[str, Any]:
        """For reports: is it recording, its depth, how many records hold a branch."""
        ring = self.ring
        nonzero = sum(1 for i in range(ring.depth) if any(ring.logical(i)))
        return {"active": bool(self.active), "depth": int(ring.depth), "records_nonzero": nonzero}

    def switch_in(self, hw: Any, costs: Any, charge: switching.Charge, write_depth: bool = False) -> None:
        """PMU load of this guest state onto `hw` (see switching.py)."""
        switching.switch_in(self, hw, costs, charge, write_depth)

    def switch_out(self, hw: Any, costs: Any, charge: switching.Charge, write_depth: bool = False) -> None:
        """PMU put of this guest state from `hw` (see switching.py)."""
        switching.switch_out(self, hw, costs, charge, write_depth)


def _canonical(msr: int, value: int) -> None:
    if not is_canonical(value):
        raise gp(f"non-canonical address {value:#x} written to MSR {msr:#x}")


def _status(pmu: Any) -> int:
    """GLOBAL_STATUS of a PMU (a method on PmuBase, a property on some vendor PMUs)."""
    v = pmu.global_status
    return int(v() if callable(v) else v)
