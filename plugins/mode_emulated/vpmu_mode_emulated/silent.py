"""Silent errors: a guest counter (or LBR) enabled in the guest's view whose backing perf
event is not ACTIVE, while the vCPU is loaded and so could be running guest code.

Nothing in the emulated vPMU tells the guest (gap document §3.3, seed talk "silent error"):
no fault, no status bit. The mode re-evaluates each vCPU's counters whenever the answer can
change (every VM-entry, every host perf reschedule on the vCPU's CPU, sched in/out) and
reports the state to the engine's `host.silent` tracker, which keeps the intervals.

Causes: the scheduler's reason (`ev.blocked_by`, e.g. "host per-CPU pinned event") once the
event has run; "not scheduled at creation" for an event that never got its counter (or
could not be created); "event filter" for a counter KVM_SET_PMU_EVENT_FILTER denies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vpmu_core.api import EventState

from vpmu_mode_emulated.filtering import filter_allows

if TYPE_CHECKING:
    from vpmu_mode_emulated.kvm_pmc import KvmPmc, KvmPmu

NOT_SCHEDULED = "not scheduled at creation"
FILTERED = "event filter"


def event_cause(ev: Any, ever_active: bool) -> str | None:
    """Why a backing event is not counting, or None if it is ACTIVE."""
    if ev is None:
        return NOT_SCHEDULED
    if ev.state == EventState.ACTIVE:
        return None
    if not ever_active:
        return NOT_SCHEDULED
    return ev.blocked_by or f"perf event {ev.state.name}"


def pmc_cause(kp: KvmPmc, vcpu: Any) -> str | None:
    p = kp.pmc
    if not (p.local_en and p.global_en):
        return None
    if not filter_allows(vcpu, p):
        return FILTERED
    ev = kp.perf_event
    if ev is not None and ev.state == EventState.ACTIVE:
        kp.ever_active = True
        if kp.is_paused:
            return "perf event paused"
        return None
    return event_cause(ev, kp.ever_active)


def update(kpmu: KvmPmu) -> None:
    """Report every counter's current state (and the vLBR facilities') to the engine."""
    if kpmu.busy:
        return
    vcpu = kpmu.vcpu
    host = vcpu.host
    owner = vcpu.name
    now = vcpu.now_ns()
    loaded = vcpu.loaded_on is not None
    reported = kpmu.silent_reported
    unfiltered = vcpu.vm.filter is None
    active = EventState.ACTIVE
    for kp in kpmu.pmcs.values():
        # pmc_cause, inlined for the common cases (called at every VM-entry): a counter the
        # guest has not enabled, or one counting through its ACTIVE event with no filter
        p = kp.pmc
        if not (loaded and p.local_en and p.global_en):
            cause = None
        elif unfiltered and not kp.is_paused and (ev := kp.perf_event) is not None and ev.state == active:
            kp.ever_active = True
            cause = None
        else:
            cause = pmc_cause(kp, vcpu)
        # the tracker's update is a no-op for a state it already has: report changes only
        if reported.get(kp.name) == cause:
            continue
        if cause is None:
            del reported[kp.name]
        else:
            reported[kp.name] = cause
        host.silent.update(owner, kp.name, cause is not None, cause or "", now)
    for name, vlbr in kpmu.vlbrs.items():
        cause = vlbr.silent_cause() if loaded else None
        host.silent.update(owner, name, cause is not None, cause or "", now)
        vlbr.sync_blocked()


def close_all(kpmu: KvmPmu) -> None:
    """The vCPU is scheduled out: the guest runs nothing, so nothing is being lost."""
    vcpu = kpmu.vcpu
    now = vcpu.now_ns()
    kpmu.silent_reported.clear()
    for kp in kpmu.pmcs.values():
        vcpu.host.silent.update(vcpu.name, kp.name, False, "", now)
    for name in kpmu.vlbrs:
        vcpu.host.silent.update(vcpu.name, name, False, "", now)
