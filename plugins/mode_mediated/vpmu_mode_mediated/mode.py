"""The `mediated` mode: KVM's mediated passthrough vPMU as merged for Linux 7.0
(`enable_mediated_pmu`), with the placements it was argued against as options.

The hook implementations only dispatch: the rules live in one module each
(requirements, intercepts, switch, coexistence, pmi, emulation, global_ctrl).

Placement (`switch_at`, facts kvm-vpmu.md §2.5):
- `run_loop` (merged v5/v6): load when the inner run loop is entered, put when a slow-path
  exit leaves it; fastpath exits re-enter without switching. The guest GLOBAL_CTRL is still
  read after every exit.
- `exit` (RFC v1-v4): put at every VM-exit, load at every VM-entry (fastpath ones too).
- `vcpu_run` (the FPU-like alternative from seed 000): load at KVM_RUN entry (and sched-in
  inside it), put at KVM_RUN return (and sched-out). Cheapest, but host perf is blind to
  everything KVM does inside KVM_RUN; `report()` gives that blind window.

Where the issue and the merged kernel disagree, this follows the kernel by default:
- Facilities: the merged kernel disables LBR and PEBS for every guest when mediated is on
  (v6 17/44, 18/44): with `facilities=off` (default) a guest gets no facility (no CPUID
  bits, its MSRs #GP). `facilities=passthrough` models the design the issue describes:
  the facility's record MSRs pass through and its state is switched at the same boundary
  as the PMU (Arch LBR by XSAVES/XRSTORS, where the guest-depth == host-depth rule bites).
- Intel GLOBAL_STATUS_SET is not among the passed-through registers (v6 22/44 lists
  GLOBAL_CTRL/STATUS/OVF_CTRL); AMD's STATUS_SET is.
Simplifications: an emulated instruction's KVM_REQ_PMI (counter wrap) is injected at the
next VM-entry after the one that resumed the guest.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from vpmu_core.api import (
    KVM_7_0,
    UPGRADE_V5_VERSION,
    ExitClock,
    ExitConstant,
    ExitGuestCycles,
    FastForwardRules,
    KvmPmuCaps,
    get_logger,
    hookimpl,
)

from vpmu_mode_mediated.coexistence import Coexistence
from vpmu_mode_mediated.emulation import MsrEmulation, instruction_retired
from vpmu_mode_mediated.global_ctrl import install_guest_view
from vpmu_mode_mediated.intercepts import compute_intercepts
from vpmu_mode_mediated.options import MediatedOptions
from vpmu_mode_mediated.pmi import PmiRouter
from vpmu_mode_mediated.requirements import check_requirements
from vpmu_mode_mediated.state import MEDIATED_PMI_VECTOR, VcpuState
from vpmu_mode_mediated.switch import Switcher

log = get_logger("vpmu.mode.mediated")


class MediatedMode:
    """One composition's mediated vPMU. Built by `ModeSpec.factory(model, options)`."""

    def __init__(self, model: Any, options: dict[str, Any]) -> None:
        self.model = model
        self.options = MediatedOptions.parse(options)
        self.rules = check_requirements(model)
        self.switcher = Switcher(self.options, self.rules)
        self.coexistence = Coexistence(self.options.host_policy)
        self.pmi = PmiRouter()
        self.msrs = MsrEmulation(self.switcher)
        #: kvm_pmu_cap: the mediated merge keeps version 2 and KVM_MAX_NR_INTEL_FIXED_COUNTERS
        self.kvm_caps: KvmPmuCaps = KVM_7_0
        if self.options.upgrade_v5:
            self.kvm_caps = KvmPmuCaps(max_version=UPGRADE_V5_VERSION)
        self.host: Any = None
        self.emulated_increments = 0
        self.vcpus: list[Any] = []

    @hookimpl
    def vpmu_host_created(self, host: Any) -> None:
        """Called once the host is built: per-CPU state and the VMX GLOBAL_CTRL view."""
        self.host = host
        self.switcher.attach(host)
        self.coexistence.attach(host)
        self.pmi.attach(self.switcher.cpus)
        if self.rules.atomic_global_ctrl:
            for cpu in host.cpus:
                install_guest_view(cpu, self.switcher.cpus[cpu.index], self.switcher)

    # ---- placement helpers ------------------------------------------------------------------
    def _st(self, vcpu: Any) -> VcpuState | None:
        st = vcpu.mode_state
        return st if st is not None and st.enabled else None

    # ---- VM / vCPU lifecycle -----------------------------------------------------------------
    @hookimpl
    def vpmu_vcpu_create(self, vcpu: Any) -> None:
        host_pmu = vcpu.host.cpus[0].pmu
        st = compute_intercepts(vcpu.pmu, host_pmu, self.rules)
        if self.options.facilities == "passthrough":
            for fac in vcpu.facilities.values():
                st.passthrough |= set(getattr(fac, "passthrough_msrs", ()) or ())
        if st.enabled:
            self.coexistence.create_mediated_pmu(vcpu.vm)
        vcpu.mode_state = st
        self.vcpus.append(vcpu)
        log.debug(
            "mediated.vcpu_create",
            vcpu=vcpu.name,
            enabled=st.enabled,
            global_passthrough=st.global_passthrough,
            rdpmc_passthrough=st.rdpmc_passthrough,
        )

    @hookimpl
    def vpmu_limit_guest_pmu(self, cfg: Any) -> Any:
        """`kvm_pmu_cap` (vpmu_core.hv.kvm_caps, shared with the emulated mode): version 2 and
        at most 3 fixed counters in 7.0, mediated or not (`kvm_init_pmu_capability`,
        KVM_MAX_NR_INTEL_FIXED_COUNTERS; `intel_pmu_refresh` takes the min). On a host with 4
        fixed counters (Ice Lake, Sapphire Rapids) the guest then has fewer than the host, so
        `kvm_need_any_pmc_intercept()` keeps RDPMC and the global registers intercepted
        (intercepts.py)."""
        return self.kvm_caps.limit(cfg)

    @hookimpl
    def vpmu_facility_allowed(self, name: str) -> bool:
        """Whether guests get facility `name` at all (the merged kernel: none)."""
        return self.options.facilities == "passthrough"

    @hookimpl
    def vpmu_vm_destroy(self, vm: Any) -> None:
        for v in vm.vcpus:
            if v.mode_state is not None:
                self.switcher.put(v)
        self.coexistence.release(vm)

    # ---- placements ----------------------------------------------------------------------------
    @hookimpl
    def vpmu_vcpu_load(self, vcpu: Any, cpu: Any) -> None:
        if self.options.switch_at == "vcpu_run" and vcpu.in_vcpu_run and self._st(vcpu):
            self.switcher.load(vcpu)

    @hookimpl
    def vpmu_vcpu_put(self, vcpu: Any, cpu: Any) -> None:
        # every placement: a scheduled-out vCPU never leaves its context in hardware
        if self._st(vcpu):
            self.switcher.put(vcpu)

    @hookimpl
    def vpmu_vcpu_run_enter(self, vcpu: Any) -> None:
        if self.options.switch_at == "vcpu_run" and self._st(vcpu):
            self.switcher.load(vcpu)

    @hookimpl
    def vpmu_vcpu_run_leave(self, vcpu: Any) -> None:
        if self.options.switch_at == "vcpu_run" and self._st(vcpu):
            self.switcher.put(vcpu)

    @hookimpl
    def vpmu_run_loop_enter(self, vcpu: Any) -> None:
        if self.options.switch_at == "run_loop" and self._st(vcpu):
            self.switcher.load(vcpu)

    @hookimpl
    def vpmu_run_loop_leave(self, vcpu: Any) -> None:
        if self.options.switch_at == "run_loop" and self._st(vcpu):
            self.switcher.put(vcpu)

    @hookimpl
    def vpmu_vm_entry(self, vcpu: Any) -> None:
        st = self._st(vcpu)
        if st is None:
            return
        if self.options.switch_at == "exit":
            self.switcher.load(vcpu)
        elif st.filter_dirty and st.loaded_cpu is not None:
            # KVM_REQ_PMU after a filter change: refresh eventsel_hw before entering
            for idx in st.gp_idx:
                self.switcher.reprogram_selector(vcpu, idx)
            self.switcher.reprogram_fixed_ctrl(vcpu)
            st.filter_dirty = False

    @hookimpl
    def vpmu_fast_forward_state(self, vcpu: Any) -> Hashable | None:
        """Where the vCPU's context is loaded, the CPU's LVTPC routing, the pending filter
        refresh and the selectors programmed in hardware."""
        st = self._st(vcpu)
        if st is None:
            return ("mediated", None)
        cs = self.switcher.cpus[vcpu.cpu.index]
        return (
            "mediated",
            self.options.switch_at,
            st.enabled,
            st.loaded_cpu,
            st.filter_dirty,
            tuple(sorted(st.eventsel_hw.items())),
            st.fixed_ctrl_hw,
            cs.loaded is vcpu,
            cs.lvtpc,
        )

    @hookimpl
    def vpmu_fast_forward_rules(self, vcpu: Any) -> FastForwardRules | None:
        """How a put and load leave the blind-window bookkeeping (switch.py): the clock and
        the guest cycles at the load, and the cycles the load itself took. The switch saves
        and loads every guest counter; its work compares each with zero at the put and, at
        the load, with what host perf left in the hardware counter (the elided write of
        v6 34/44). Not with facilities passed through: their state switch reads records the
        core does not follow."""
        st = self._st(vcpu)
        if st is None or (self.options.facilities == "passthrough" and vcpu.facilities):
            return None
        return FastForwardRules(
            fields={
                "load_cycles": ExitClock(),
                "load_guest_cycles": ExitGuestCycles(),
                "load_offset": ExitConstant(),
            },
            switched_counters=(*st.gp_idx, *st.fixed_idx),
        )

    @hookimpl
    def vpmu_vm_exit(self, vcpu: Any, reason: str, fastpath: bool) -> None:
        if self._st(vcpu) is None:
            return
        self.switcher.exit_read_global_ctrl(vcpu)
        if self.options.switch_at == "exit":
            self.switcher.put(vcpu)

    @hookimpl
    def vpmu_filter_changed(self, vcpu: Any) -> None:
        """KVM_SET_PMU_EVENT_FILTER: every vCPU refreshes eventsel_hw before its next entry."""
        st = self._st(vcpu)
        if st is not None:
            st.filter_dirty = True
            # kvm_make_all_cpus_request kicks a vCPU in guest mode: the filter is in force
            # from the VM-entry right after the ioctl
            vcpu.kick("external_interrupt")

    # ---- interception --------------------------------------------------------------------------
    @hookimpl
    def vpmu_msr_intercepted(self, vcpu: Any, msr: int, write: bool) -> bool | None:
        st = vcpu.mode_state
        if st is not None and msr in st.passthrough:
            return False
        return None

    @hookimpl
    def vpmu_rdpmc_intercepted(self, vcpu: Any) -> bool | None:
        st = vcpu.mode_state
        if st is not None and st.rdpmc_passthrough:
            return False
        return None

    @hookimpl
    def vpmu_guest_wrmsr(self, vcpu: Any, msr: int, value: int) -> bool | None:
        return self.msrs.wrmsr(vcpu, msr, value)

    @hookimpl
    def vpmu_guest_rdmsr(self, vcpu: Any, msr: int) -> int | None:
        return self.msrs.rdmsr(vcpu, msr)

    @hookimpl
    def vpmu_guest_rdpmc(self, vcpu: Any, ecx: int) -> int | None:
        return self.msrs.rdpmc(vcpu, ecx)

    # ---- emulated instructions -----------------------------------------------------------------
    @hookimpl
    def vpmu_instruction_retired(self, vcpu: Any) -> None:
        self.emulated_increments += instruction_retired(vcpu)

    # ---- PMIs and host perf ----------------------------------------------------------------------
    @hookimpl
    def vpmu_host_pmi(self, cpu: Any, pmc: Any, overshoot: int) -> bool | None:
        return self.pmi.host_pmi(cpu, pmc, overshoot)

    @hookimpl
    def vpmu_host_perf_event_open(self, attr: Any, pid: int, cpu: int) -> int | None:
        return self.coexistence.perf_event_open(attr)

    # ---- migration -------------------------------------------------------------------------------
    @hookimpl
    def vpmu_vcpu_save_state(self, vcpu: Any, state: dict) -> None:
        if self._st(vcpu):
            self.switcher.pull(vcpu)

    @hookimpl
    def vpmu_vcpu_restore_state(self, vcpu: Any, state: dict) -> None:
        if self._st(vcpu):
            self.switcher.push(vcpu)

    # ---- reports -----------------------------------------------------------------------------------
    @hookimpl
    def vpmu_guest_counter_values(self, vcpu: Any) -> dict[str, int]:
        """What the guest would read from each of its counters now (hex KVM idx -> value,
        the report's key format): the live hardware value while the context is loaded."""
        st = self._st(vcpu)
        if st is not None and st.loaded_cpu is not None:
            hw = vcpu.host.cpus[st.loaded_cpu].pmu
            return {f"{p.idx:#x}": hw.pmc(p.idx).value for p in vcpu.pmu.pmcs}
        return {f"{p.idx:#x}": vcpu.pmu.read_counter(p) for p in vcpu.pmu.pmcs}

    @hookimpl
    def vpmu_mode_report(self, host: Any) -> dict[str, Any]:
        """Mode statistics: switches, elided writes, blind window, coexistence, PMIs."""
        freq = host.freq_hz
        per_vcpu = {}
        blind_total = self.switcher.blind_cycles
        for v in self.vcpus:
            st = self._st(v)
            if st is None:
                continue
            blind = st.blind_cycles + self.switcher.open_blind_cycles(v)
            blind_total += blind - st.blind_cycles
            exits = v.stats.total_exits
            total = sum(v.stats.overhead_cycles.values())
            per_vcpu[v.name] = {
                "loads": st.loads,
                "puts": st.puts,
                "blind_window_ns": blind * 1_000_000_000 // freq,
                "exits": exits,
                "fastpath_exits": v.stats.fastpath_exits,
                "cycles_per_exit": total / exits if exits else 0.0,
                "global_passthrough": st.global_passthrough,
                "rdpmc_passthrough": st.rdpmc_passthrough,
            }
        return {
            "switch_at": self.options.switch_at,
            "host_policy": self.options.host_policy,
            "elide_writes": self.options.elide_writes,
            "pmi_vector": MEDIATED_PMI_VECTOR,
            **self.switcher.stats.as_dict(),
            # host-mode time with host perf scheduled out (what host perf cannot profile)
            "blind_window_ns": blind_total * 1_000_000_000 // freq,
            "pmis_claimed": self.pmi.claimed,
            "pmis_claimed_after_exit": self.pmi.claimed_outside_guest,
            "emulated_increments": self.emulated_increments,
            "mediated_vms": self.coexistence.mediated_vms,
            "refused_vcpus": self.coexistence.refused_vcpus,
            "refused_perf_opens": self.coexistence.refused_opens,
            "leak_checks": host.leaks.checks,
            "leaks": len(host.leaks.leaks),
            "vcpus": per_vcpu,
        }
