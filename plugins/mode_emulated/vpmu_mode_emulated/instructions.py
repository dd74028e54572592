"""Counting the instructions KVM emulates (`kvm_pmu_instruction_retired`). Not modelled:
`kvm_pmu_branch_retired` (a branch KVM's instruction emulator or a nested VM-entry/exit
takes): no guest operation of the API emulates a branch.

An intercepted instruction never retires in guest mode, so no hardware counter sees it;
KVM adds it in software: `emulated_counter++` and a reprogram request for every counter
that counts it (event matched on the normalized kind, global and local enable, the event
filter, the CPL against USR/OS). The set is taken *after* the instruction took effect, in
its exit handler: `kvm_emulate_wrmsr()` writes the MSR, then
`kvm_skip_emulated_instruction()` -> `kvm_pmu_instruction_retired()` ->
`kvm_pmu_trigger_event()` reads the new GLOBAL_CTRL (`pmu->global_ctrl`), the new selectors
(`pmc_counting_instructions` is recomputed at the write itself since "KVM: x86/pmu:
Calculate set of to-be-emulated PMCs at time of WRMSRs", kvm_pmu_request_counter_reprogram
-> kvm_pmu_recalc_pmc_emulation) and the event filter (`pmc_event_is_allowed`). The
increment is applied before the KVM_REQ_PMU service of the following VM-entry, so an
emulated wrap sets its status bit and injects its PMI at that same entry. An instruction
that #GPs is not skipped, hence not counted (the core does not call the hook).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vpmu_core.api import EventKind

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


def instruction_retired(kpmu: KvmPmu) -> None:
    """`kvm_pmu_instruction_retired`: KVM skipped an instruction it emulated, under the
    state as it is now (after the instruction's effect)."""
    incr(kpmu, counting_pmcs(kpmu, EventKind.INSTRUCTIONS, kpmu.vcpu.cpl))
