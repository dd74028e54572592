"""Intel event encodings: architectural events, fixed-counter pseudo encodings, constraints.

Everything here is data from the SDM and the Linux x86 perf driver; the PMU register
model and the perf driver both read it, so the two never disagree about what an encoding
counts or where it may run.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpmu_core.api import FIXED_BASE, EventKind

# IA32_PERFEVTSELx fields (SDM Vol. 3B 20.2.1.1 Figure 20-1; Linux asm/perf_event.h
# ARCH_PERFMON_EVENTSEL_*).
EVTSEL_EVENT = 0xFF
EVTSEL_UMASK = 0xFF00
EVTSEL_USR = 1 << 16
EVTSEL_OS = 1 << 17
EVTSEL_EDGE = 1 << 18
EVTSEL_PC = 1 << 19
EVTSEL_INT = 1 << 20
EVTSEL_ANY = 1 << 21
EVTSEL_EN = 1 << 22
EVTSEL_INV = 1 << 23
EVTSEL_CMASK = 0xFF << 24
#: Linux X86_RAW_EVENT_MASK: the bits that select *what* is counted (not where/whether).
RAW_EVENT_MASK = EVTSEL_EVENT | EVTSEL_UMASK | EVTSEL_EDGE | EVTSEL_INV | EVTSEL_CMASK
#: Linux INTEL_ARCH_EVENT_MASK: event code and unit mask.
ARCH_EVENT_MASK = EVTSEL_EVENT | EVTSEL_UMASK

#: Architectural events in CPUID.0AH:EBX bit order (SDM Vol. 3B Table 20-1; KVM selftests
#: pmu.h). Key: umask << 8 | event, value: the Work kind a span of work counts it by.
ARCH_EVENTS: tuple[tuple[int, EventKind], ...] = (
    (0x003C, EventKind.CYCLES),  # 0 UnHalted Core Cycles
    (0x00C0, EventKind.INSTRUCTIONS),  # 1 Instructions Retired
    (0x013C, EventKind.REF_CYCLES),  # 2 UnHalted Reference Cycles
    (0x4F2E, EventKind.LLC_REFERENCES),  # 3 LLC Reference
    (0x412E, EventKind.LLC_MISSES),  # 4 LLC Misses
    (0x00C4, EventKind.BRANCHES),  # 5 Branch Instructions Retired
    (0x00C5, EventKind.BRANCH_MISSES),  # 6 Branch Misses Retired
    (0x01A4, EventKind.TOPDOWN_SLOTS),  # 7 Topdown Slots
    (0x02A4, EventKind.TOPDOWN_BE_BOUND),  # 8 Topdown Backend Bound
    (0x0073, EventKind.TOPDOWN_BAD_SPEC),  # 9 Topdown Bad Speculation
    (0x019C, EventKind.TOPDOWN_FE_BOUND),  # 10 Topdown Frontend Bound
    (0x02C2, EventKind.TOPDOWN_RETIRING),  # 11 Topdown Retiring
    (0x01E4, EventKind.LBR_INSERTS),  # 12 LBR Inserts
)

#: Fixed counter i counts this (SDM Vol. 3B 20.2.2 Table 20-2; Linux pseudo encodings:
#: event 0x00, umask = i + 1 for the fixed-only ones, K-pe).
FIXED_EVENTS: tuple[tuple[int, EventKind], ...] = (
    (0x00C0, EventKind.INSTRUCTIONS),
    (0x003C, EventKind.CYCLES),
    (0x0300, EventKind.REF_CYCLES),
    (0x0400, EventKind.TOPDOWN_SLOTS),
)

#: Linux `intel_perfmon_event_map` (arch/x86/events/intel/core.c).
GENERIC_EVENTS: dict[str, int] = {
    "cycles": 0x003C,
    "instructions": 0x00C0,
    "cache-references": 0x4F2E,
    "cache-misses": 0x412E,
    "branches": 0x00C4,
    "branch-misses": 0x00C5,
    "bus-cycles": 0x013C,
    "ref-cycles": 0x0300,
}


@dataclass(frozen=True)
class Constraint:
    """One Linux `struct event_constraint`: `(config & cmask) == code` (or, for a range,
    lo <= config & cmask <= hi) restricts the event to `idxmsk` (GP bits, or a fixed bit)."""

    code: int
    cmask: int
    idxmsk: int
    hi: int | None = None

    def matches(self, config: int) -> bool:
        v = config & self.cmask
        if self.hi is not None:
            return self.code <= v <= self.hi
        return v == self.code


def event_c(code: int, gp_mask: int) -> Constraint:
    """INTEL_EVENT_CONSTRAINT: matches the event code only."""
    return Constraint(code, EVTSEL_EVENT, gp_mask)


def uevent_c(code: int, gp_mask: int) -> Constraint:
    """INTEL_UEVENT_CONSTRAINT: matches event code and unit mask."""
    return Constraint(code, ARCH_EVENT_MASK, gp_mask)


def range_c(lo: int, hi: int, gp_mask: int) -> Constraint:
    """INTEL_EVENT_CONSTRAINT_RANGE: event codes lo..hi."""
    return Constraint(lo, EVTSEL_EVENT, gp_mask, hi)


def fixed_c(code: int, idx: int) -> Constraint:
    """FIXED_EVENT_CONSTRAINT: cmask is FIXED_EVENT_FLAGS (= X86_RAW_EVENT_MASK | IN_TX bits),
    so an event with EDGE/INV/CMASK never matches a fixed counter."""
    return Constraint(code, RAW_EVENT_MASK, 1 << (FIXED_BASE + idx))


# arch/x86/events/intel/core.c `intel_skl_event_constraints`
SKL_CONSTRAINTS: tuple[Constraint, ...] = (
    fixed_c(0x00C0, 0),  # INST_RETIRED.ANY
    fixed_c(0x003C, 1),  # CPU_CLK_UNHALTED.CORE
    fixed_c(0x0300, 2),  # CPU_CLK_UNHALTED.REF
    uevent_c(0x01C0, 0x2),  # INST_RETIRED.PREC_DIST
    # "when HT is off, these can only run on the bottom 4 counters"
    event_c(0xD0, 0xF),  # MEM_INST_RETIRED.*
    event_c(0xD1, 0xF),  # MEM_LOAD_RETIRED.*
    event_c(0xD2, 0xF),  # MEM_LOAD_L3_HIT_RETIRED.*
    event_c(0xCD, 0xF),  # MEM_TRANS_RETIRED.*
    event_c(0xC6, 0xF),  # FRONTEND_RETIRED.*
)

# arch/x86/events/intel/core.c `intel_icl_event_constraints` (metric pseudo events 0x80xx
# are not modelled: perf metrics are read through PERF_METRICS, not scheduled).
ICL_CONSTRAINTS: tuple[Constraint, ...] = (
    fixed_c(0x00C0, 0),  # INST_RETIRED.ANY
    fixed_c(0x01C0, 0),  # old INST_RETIRED.PREC_DIST
    fixed_c(0x0100, 0),  # INST_RETIRED.PREC_DIST
    fixed_c(0x003C, 1),  # CPU_CLK_UNHALTED.CORE
    fixed_c(0x0300, 2),  # CPU_CLK_UNHALTED.REF
    fixed_c(0x0400, 3),  # SLOTS
    range_c(0x03, 0x0A, 0xF),
    range_c(0x1F, 0x28, 0xF),
    event_c(0x32, 0xF),  # SW_PREFETCH_ACCESS.*
    range_c(0x48, 0x54, 0xF),
    range_c(0x60, 0x8B, 0xF),
    uevent_c(0x04A3, 0xFF),  # CYCLE_ACTIVITY.STALLS_TOTAL
    uevent_c(0x10A3, 0xFF),  # CYCLE_ACTIVITY.CYCLES_MEM_ANY
    uevent_c(0x14A3, 0xFF),  # CYCLE_ACTIVITY.STALLS_MEM_ANY
    event_c(0xA3, 0xF),  # CYCLE_ACTIVITY.*
    range_c(0xA8, 0xB0, 0xF),
    range_c(0xB7, 0xBD, 0xF),
    range_c(0xD0, 0xE6, 0xF),
    event_c(0xEF, 0xF),
    range_c(0xF0, 0xF4, 0xF),
)

# arch/x86/events/intel/core.c `intel_spr_event_constraints` (later `intel_glc_...`);
# first match wins, so the 0x2e/0x3c exceptions precede the 0x01-0x8f range.
SPR_CONSTRAINTS: tuple[Constraint, ...] = (
    fixed_c(0x00C0, 0),  # INST_RETIRED.ANY
    fixed_c(0x0100, 0),  # INST_RETIRED.PREC_DIST
    fixed_c(0x003C, 1),  # CPU_CLK_UNHALTED.CORE
    fixed_c(0x0300, 2),  # CPU_CLK_UNHALTED.REF
    fixed_c(0x013C, 2),  # CPU_CLK_UNHALTED.REF_TSC_P (newer kernels)
    fixed_c(0x0400, 3),  # SLOTS
    event_c(0x2E, 0xFF),
    event_c(0x3C, 0xFF),
    # "Generally event codes < 0x90 are restricted to counters 0-3."
    range_c(0x01, 0x8F, 0xF),
    uevent_c(0x01A3, 0xF),
    uevent_c(0x02A3, 0xF),
    uevent_c(0x08A3, 0xF),
    uevent_c(0x04A4, 0x1),
    uevent_c(0x08A4, 0x1),
    uevent_c(0x02CD, 0x1),
    event_c(0xCE, 0x1),
    range_c(0xD0, 0xDF, 0xF),
    # "Generally event codes >= 0x90 are likely to have no restrictions."
    range_c(0x90, 0xFE, 0xFF),
)


def constraint_mask(table: tuple[Constraint, ...], config: int, gp_all: int) -> int:
    """Counters an event may use (Linux `x86_get_event_constraints` + the fix-ups of
    `intel_pmu_check_event_constraints`): first matching entry; a fixed constraint also
    allows every GP counter unless it is a pseudo encoding (event code 0: ref-cycles 0x0300,
    SLOTS 0x0400 are fixed-only, `use_fixed_pseudo_encoding()`); unlisted = all GP."""
    config &= RAW_EVENT_MASK
    for c in table:
        if c.matches(config):
            if c.idxmsk >> FIXED_BASE:
                return c.idxmsk | (gp_all if config & EVTSEL_EVENT else 0)
            return c.idxmsk & gp_all
    return gp_all
