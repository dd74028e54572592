"""Counter overflow -> guest GLOBAL_STATUS bit -> virtual PMI (arch/x86/kvm/pmu.c).

The host perf overflow handler (`kvm_perf_overflow`, NMI context) records the overflow in
the guest-visible status and asks for a PMI with KVM_REQ_PMI; the PMI is injected through
the virtual LVTPC at the next VM-entry, after KVM_REQ_PMU re-arms the sample period. Both
are request bits, so however many counters overflow during one exit the guest gets at most
one PMI (commit 73554b29bd70 "Synthesize at most one PMI per VM-exit").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vpmu_core.api import get_logger

if TYPE_CHECKING:
    from vpmu_core.api import PerfEvent

    from vpmu_mode_emulated.kvm_pmc import KvmPmc, KvmPmu

log = get_logger("vpmu.mode_emulated")


def kvm_pmu_overflow(kpmu: KvmPmu, kp: KvmPmc, in_pmi: bool) -> None:
    """`__kvm_perf_overflow`: set the guest status bit (the vendor model knows where, if
    anywhere), and request a PMI if the event was created with INT."""
    vcpu = kpmu.vcpu
    vcpu.pmu.raise_overflow(kp.pmc)
    kpmu.stats["overflows_from_perf" if in_pmi else "overflows_emulated"] += 1
    if kp.intr:
        kpmu.stats["pmi_requests"] += 1
        vcpu.request_pmi()
    log.debug("kvm.overflow", vcpu=vcpu.name, pmc=kp.name, in_pmi=in_pmi, pmi=kp.intr)


def kvm_perf_overflow(kpmu: KvmPmu, kp: KvmPmc) -> None:
    """`kvm_perf_overflow`: ignore it if the counter is already due for reprogramming (a
    PMI racing with a guest WRMSR), else inject and request KVM_REQ_PMU so the next entry
    recomputes the period from the wrapped counter."""
    bit = 1 << kp.idx
    if kpmu.reprogram_pmi & bit:
        kpmu.stats["overflows_ignored"] += 1
        return
    kpmu.reprogram_pmi |= bit
    kvm_pmu_overflow(kpmu, kp, in_pmi=True)
    kpmu.req_pmu = True


def make_overflow_handler(kpmu: KvmPmu, kp: KvmPmc) -> Any:
    """The `overflow_handler` KVM passes to perf_event_create_kernel_counter."""

    def handler(ev: PerfEvent, overshoot: int) -> None:
        if kp.perf_event is ev:
            kvm_perf_overflow(kpmu, kp)

    return handler
