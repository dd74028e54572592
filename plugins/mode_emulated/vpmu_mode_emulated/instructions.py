"""Counting instructions and branches that KVM emulates (`kvm_pmu_instruction_retired`,
`kvm_pmu_branch_retired`).

An intercepted instruction never retires in guest mode, so no hardware counter sees it;
KVM adds it in software: `emulated_counter++` and a reprogram request for every counter
that counts it (event matched on the normalized kind, global and local enable, the event
filter, the CPL against USR/OS). Per DESIGN §5 the set of counters is taken *before* the
instruction takes effect (`instruction_snapshot`), and the increment is applied during the
exit, before the KVM_REQ_PMU service of the following VM-entry (KVM skips the instruction
in the exit handler), so an emulated wrap injects its PMI at that same entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vpmu_core.events import EventKind

from vpmu_mode_emulated.filtering import pmc_event_is_allowed

if TYPE_CHECKING:
    from vpmu_mode_emulated.kvm_pmc import KvmPmc, KvmPmu


def counting_pmcs(kpmu: KvmPmu, kind: EventKind, cpl: int) -> tuple[KvmPmc, ...]:
    """The counters that count one emulated event of `kind` at `cpl` right now."""
    vcpu = kpmu.vcpu
    out = []
    for kp in kpmu.pmcs.values():
        p = kp.pmc
        if p.event == kind and p.counts_cpl(cpl) and pmc_event_is_allowed(vcpu, p):
            out.append(kp)
    return tuple(out)


def incr(kpmu: KvmPmu, pmcs: tuple[KvmPmc, ...]) -> None:
    """`kvm_pmu_incr_counter` for each counter: emulated_counter++, request reprogram."""
    mask = 0
    for kp in pmcs:
        kp.emulated_counter += 1
        mask |= 1 << kp.idx
    if pmcs:
        kpmu.stats["emulated_events"] += len(pmcs)
        kpmu.request_reprogram(mask)


def snapshot(kpmu: KvmPmu) -> tuple[KvmPmc, ...]:
    """Before an intercepted instruction: who counts it (stashed for the coming entry)."""
    token = counting_pmcs(kpmu, EventKind.INSTRUCTIONS, kpmu.vcpu.cpl)
    kpmu.pending_retire = token
    return token


def retire_pending(kpmu: KvmPmu) -> None:
    """At the VM-entry ending the exit: count the emulated instruction, if it retired."""
    token = kpmu.pending_retire
    if token is not None:
        kpmu.pending_retire = None
        incr(kpmu, token)


def instruction_faulted(kpmu: KvmPmu) -> None:
    """The intercepted instruction faulted (#GP): it does not retire, nothing counts it."""
    kpmu.pending_retire = None


def branch_retired(kpmu: KvmPmu) -> None:
    """`kvm_pmu_branch_retired`: KVM emulated a branch (e.g. nested VM-entry/exit or the
    instruction emulator taking a jump); counted under the current state."""
    incr(kpmu, counting_pmcs(kpmu, EventKind.BRANCHES, kpmu.vcpu.cpl))


def instruction_retired_now(kpmu: KvmPmu) -> None:
    """`kvm_pmu_instruction_retired` for an instruction emulated outside the guest MSR
    paths the core drives (e.g. the emulator skipping an instruction)."""
    incr(kpmu, counting_pmcs(kpmu, EventKind.INSTRUCTIONS, kpmu.vcpu.cpl))


def token_names(token: Any) -> list[str]:
    return [kp.name for kp in token or ()]
