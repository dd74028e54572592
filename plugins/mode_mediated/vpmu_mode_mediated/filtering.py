"""The event filter through the filtered hardware copy (v6 25/44,
`kvm_mediated_pmu_refresh_event_filter`): the guest reads back its own selector, hardware
gets `eventsel_hw` = the vendor's hardware form (AMD forces GuestOnly, v6 26/44) with the
enable bit cleared when KVM_SET_PMU_EVENT_FILTER denies the event; fixed counters get
`fixed_ctr_ctrl_hw` with the denied counters' 4-bit fields cleared.
"""

from __future__ import annotations

from typing import Any

#: ARCH_PERFMON_EVENTSEL_ENABLE: bit 22 on every x86 selector (Intel PERFEVTSELx, AMD
#: PERF_CTLx); KVM's common pmu.c clears it for denied events.
EVENTSEL_ENABLE = 1 << 22
#: fixed-counter control: one 4-bit field per counter (KVM `fixed_ctrl_field`)
FIXED_FIELD_BITS = 4


def eventsel_hw(vcpu: Any, idx: int, sel_msr: int | None = None, hw_pmu: Any = None) -> int:
    """The selector value hardware gets for guest GP counter `idx` (`sel_msr`: its guest
    selector MSR, `hw_pmu`: the vCPU's physical PMU, when the caller has them)."""
    guest = vcpu.pmu
    if sel_msr is None:
        sel_msr = guest.eventsel_msr(guest.pmc(idx))
    sel = guest.rdmsr(sel_msr)
    if sel == 0:
        # an idle selector: KVM computes eventsel_hw on guest writes only (facts §2.7), so a
        # never-programmed counter keeps 0 in hardware and put does not need to zero it
        # (the AMD calibration of costs.md assumes exactly that)
        return 0
    hw = (hw_pmu if hw_pmu is not None else vcpu.cpu.pmu).hw_eventsel(sel)
    flt = vcpu.vm.filter
    if flt is not None and not flt.gp_allowed(sel):
        hw &= ~EVENTSEL_ENABLE
    return hw


def fixed_ctrl_hw(vcpu: Any, msr: int) -> int:
    """The fixed-counter control hardware gets."""
    value = vcpu.pmu.rdmsr(msr)
    flt = vcpu.vm.filter
    if flt is None:
        return value
    for i in range(len(vcpu.pmu.fixed)):
        if not flt.fixed_allowed(i):
            value &= ~(((1 << FIXED_FIELD_BITS) - 1) << (FIXED_FIELD_BITS * i))
    return value
