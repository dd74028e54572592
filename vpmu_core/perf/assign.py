"""Counter assignment, after arch/x86/events/core.c `x86_schedule_events()` and
`perf_assign_events()`:

1. fast path: every event keeps the counter it had, if that counter is still in its
   constraint mask and not taken by an earlier event;
2. slow path: events by increasing constraint weight; each takes the first free counter
   of its mask, fixed-purpose counters first (`__perf_sched_find_counter`);
3. backtracking is bounded and, as in Linux, only tried for constraints flagged
   "overlap" (EVENT_CONSTRAINT_OVERLAP); otherwise a greedy failure is a failure.

Facility resources (e.g. "lbr") are exclusive per CPU, shared only by equal keys.
"""

from __future__ import annotations

from collections.abc import Sequence

from vpmu_core.hw.pmc import FIXED_BASE
from vpmu_core.perf.driver import HwEvent

#: Linux keeps at most SCHED_STATES_MAX saved states for backtracking
MAX_BACKTRACK_STATES = 2
MAX_BACKTRACK_STEPS = 256


def _bits_fixed_first(mask: int) -> list[int]:
    """__perf_sched_find_counter()'s order: the fixed-purpose counters of the constraint
    first ("grab the first fixed counter"), then the general-purpose ones."""
    fixed = [i for i in range(FIXED_BASE, 64) if mask >> i & 1]
    gp = [i for i in range(0, FIXED_BASE) if mask >> i & 1]
    return fixed + gp


def resources_fit(events: Sequence[HwEvent]) -> bool:
    """The facility resources of the events (e.g. "lbr") are exclusive per CPU: shared only
    by equal keys (the kernel's shared-register constraints, e.g. LBR_SELECT)."""
    held: dict[str, str] = {}
    for hw in events:
        for name, key in hw.resources:
            cur = held.get(name)
            if cur is None:
                held[name] = key
            elif cur != key:
                return False
    return True


def assign_counters(events: Sequence[HwEvent], prev: Sequence[int | None], available: int) -> list[int | None] | None:
    """x86_schedule_events(): a counter for each event (None for counterless ones), or None
    if impossible. `prev`: the counter each event had; `available`: counters the hardware
    offers. The fast path first, then perf_assign_events()."""
    if not resources_fit(events):
        return None
    fast = _reuse_prev(events, prev, available)
    if fast is not None:
        return fast
    return _perf_assign_events(events, available)


def fits_previous(events: Sequence[HwEvent], prev: Sequence[int | None], available: int) -> bool:
    """Whether x86_schedule_events() would take its fast path: every event keeps `prev`
    (the facility resources fitting too)."""
    return resources_fit(events) and _reuse_prev(events, prev, available) is not None


def _reuse_prev(events: Sequence[HwEvent], prev: Sequence[int | None], available: int) -> list[int | None] | None:
    """x86_schedule_events()'s fast path ("try to reuse previous register"): every event
    keeps the counter it had, if that counter is still in its constraint mask and no
    earlier event took it. None if any event cannot."""
    out: list[int | None] = [None] * len(events)
    used = 0
    for i, hw in enumerate(events):
        if hw.counterless:
            continue
        idx = prev[i]
        c = hw.mask & available
        if idx is None or not (c >> idx & 1) or used >> idx & 1:
            return None
        used |= 1 << idx
        out[i] = idx
    return out


def _perf_assign_events(events: Sequence[HwEvent], available: int) -> list[int | None] | None:
    """perf_assign_events() / perf_sched_find_counter(): events by increasing constraint
    weight (perf_sched_init, perf_sched_next_event), each takes the first free counter in
    `_bits_fixed_first` order (__perf_sched_find_counter). An overlap constraint's choice is
    saved (perf_sched_save_state, at most SCHED_STATES_MAX); a failure goes back to the
    last saved choice and tries its next counter (perf_sched_restore_state), at most
    MAX_BACKTRACK_STEPS times. None if some event finds no counter."""
    n = len(events)
    order = sorted((i for i in range(n) if not events[i].counterless), key=lambda i: (events[i].weight, i))
    out: list[int | None] = [None] * n
    used = 0
    saved: list[tuple[int, int, int]] = []  # (position in order, used, tried counter)
    pos = 0
    steps = 0
    start_from: dict[int, int] = {}
    while pos < len(order):
        i = order[pos]
        hw = events[i]
        candidates = [b for b in _bits_fixed_first(hw.mask & available) if not used >> b & 1]
        skip = start_from.pop(pos, None)
        if skip is not None:
            candidates = candidates[candidates.index(skip) + 1 :] if skip in candidates else []
        if candidates:
            b = candidates[0]
            if hw.overlap and len(saved) < MAX_BACKTRACK_STATES:
                saved.append((pos, used, b))
            out[i] = b
            used |= 1 << b
            pos += 1
            continue
        # failure: backtrack to the last overlap decision, if any
        steps += 1
        if not saved or steps > MAX_BACKTRACK_STEPS:
            return None
        pos, used, tried = saved.pop()
        for j in order[pos:]:
            out[j] = None
        start_from[pos] = tried
    return out
