"""What KVM still emulates for a mediated guest: intercepted PMU MSRs and RDPMC, and
instructions KVM emulates or skips (facts kvm-vpmu.md §2.7).

- Intercepted MSRs are emulated on `vcpu.pmu` (the vendor's guest-visible semantics: #GP,
  reserved bits); while the context is loaded the live hardware state is pulled first and
  the result pushed back, so the guest never sees a stale value.
- Selector and fixed-control writes also reprogram the filtered hardware copy when loaded.
- Emulated instruction retired (v6 29/44, commit 283a5aa57b22, `kvm_pmu_incr_counter`
  for a mediated PMU): called inside the exit after the instruction took effect
  (`kvm_skip_emulated_instruction()` -> `kvm_pmu_instruction_retired()`), each counter that
  counts instructions at the vCPU's CPL under the state *after* the instruction (new
  GLOBAL_CTRL, selectors, counter values, event filter: `kvm_pmu_trigger_event`) gets
  `counter = (counter + 1) & mask`; a wrap to 0 sets its global status bit and, if its PMI
  is enabled, KVM_REQ_PMI. The filter is applied because the hardware copy is the one
  consulted (a denied counter has EN cleared there).
"""

from __future__ import annotations

from typing import Any

from vpmu_core.api import FIXED_BASE, EventKind

from vpmu_mode_mediated.state import VcpuState
from vpmu_mode_mediated.switch import Switcher

_INSTRUCTIONS = int(EventKind.INSTRUCTIONS)


def counting_instructions(vcpu: Any) -> tuple[int, ...] | None:
    """Counters that count an instruction retired now, at the vCPU's CPL."""
    st: VcpuState | None = vcpu.mode_state
    if st is None or not st.enabled:
        return None
    kernel = vcpu.cpl == 0
    exposed = set(st.gp_idx) | set(st.fixed_idx)
    if st.loaded_cpu is not None:
        plan = vcpu.host.cpus[st.loaded_cpu].pmu.plan(True)
    else:
        plan = [e for e in vcpu.pmu.plan(True) if _allowed(vcpu, st, e[0].idx)]
    out = tuple(
        pmc.idx
        for pmc, kind, os_, usr in plan
        if kind == _INSTRUCTIONS and pmc.idx in exposed and (os_ if kernel else usr)
    )
    return out or None


def _allowed(vcpu: Any, st: VcpuState, idx: int) -> bool:
    flt = vcpu.vm.filter
    if flt is None:
        return True
    pmc = vcpu.pmu.pmc(idx)
    if pmc.is_fixed:
        return flt.fixed_allowed(idx - FIXED_BASE)
    return flt.gp_allowed(vcpu.pmu.rdmsr(vcpu.pmu.eventsel_msr(pmc)))


def instruction_retired(vcpu: Any) -> int:
    """`kvm_pmu_instruction_retired` of a mediated vCPU; returns how many counters it
    incremented."""
    token = counting_instructions(vcpu)
    if not token:
        return 0
    st: VcpuState = vcpu.mode_state
    loaded = st.loaded_cpu is not None
    pmu = vcpu.host.cpus[st.loaded_cpu].pmu if loaded else vcpu.pmu
    for idx in token:
        pmc = pmu.pmc(idx)
        value = (pmc.value + 1) & pmc.mask
        pmu.backend.write(pmc, value)
        if value == 0 and pmu.raise_overflow(pmc):
            vcpu.request_pmi()
    return len(token)


class MsrEmulation:
    """Intercepted guest PMU accesses of a mediated vCPU."""

    def __init__(self, switcher: Switcher) -> None:
        self.switcher = switcher

    def wrmsr(self, vcpu: Any, msr: int, value: int) -> bool | None:
        st: VcpuState | None = vcpu.mode_state
        if st is None or not st.enabled or not vcpu.pmu.has_msr(msr):
            return None
        loaded = st.loaded_cpu is not None
        idx = st.selector_msrs.get(msr)
        if idx is not None:
            vcpu.pmu.wrmsr(msr, value)  # guest semantics (#GP / dropped reserved bits)
            if loaded:
                self.switcher.reprogram_selector(vcpu, idx)
            return True
        if msr == st.fixed_ctrl_msr:
            vcpu.pmu.wrmsr(msr, value)
            if loaded:
                self.switcher.reprogram_fixed_ctrl(vcpu)
            return True
        if not loaded or msr not in st.state_msrs:
            # not loaded: the core writes vcpu.pmu, the saved state is authoritative; an MSR
            # that is no counter/global state (IA32_DEBUGCTL) needs no hardware sync
            return None
        self.switcher.pull(vcpu)
        vcpu.pmu.wrmsr(msr, value)
        self.switcher.push(vcpu)
        return True

    def rdmsr(self, vcpu: Any, msr: int) -> int | None:
        st: VcpuState | None = vcpu.mode_state
        if st is None or not st.enabled or st.loaded_cpu is None:
            return None
        if msr in st.state_msrs and msr not in st.selector_msrs and msr != st.fixed_ctrl_msr:
            self.switcher.pull(vcpu)
        return None

    def rdpmc(self, vcpu: Any, ecx: int) -> int | None:
        st: VcpuState | None = vcpu.mode_state
        if st is not None and st.enabled and st.loaded_cpu is not None:
            self.switcher.pull(vcpu)
        return None
