"""The `emulated` mode: KVM's perf-based vPMU as the hypervisor hooks of the core.

Where each KVM step happens in the run loop:

- guest WRMSR/RDMSR/RDPMC of anything PMU: always intercepted (a VM-exit plus
  `kvm_emulated_msr_access`); the write goes to the vendor's guest-visible register model
  (all #GP rules are the vendor's), whose control listeners mark counters for reprogram
  and raise KVM_REQ_PMU; counters read and write through `EmulatedBackend`;
- VM-entry (`vpmu_vm_entry`): count the emulated instruction of this exit, service
  KVM_REQ_PMU (`kvm_pmu_handle_event`, lazy cleanup included), the vLBR passthrough
  decision, silent-error bookkeeping; the core then delivers a requested PMI (KVM_REQ_PMI);
- sched in (`vpmu_vcpu_load`): after a sched-out, schedule the lazy release;
- host perf reschedules on the vCPU's CPU: re-evaluate silent errors (a host pinned event
  can take a counter from a running guest at any time).

The host/guest split of host events (`exclude_guest` / `exclude_host`) is the vendor perf
driver's job at every entry and exit (Intel: the VM-entry GLOBAL_CTRL load; AMD:
Host/GuestOnly), exactly as KVM relies on perf for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from typing import Any

from vpmu_core.api import KVM_7_0, UPGRADE_V5_VERSION, KvmPmuCaps, get_logger, hookimpl, parse_bool

from vpmu_mode_emulated import instructions, silent
from vpmu_mode_emulated.backend import EmulatedBackend, pmc_read_counter
from vpmu_mode_emulated.kvm_pmc import KvmPmc, KvmPmu, bits, control_signature
from vpmu_mode_emulated.options import OPTIONS as OPTIONS
from vpmu_mode_emulated.perf_api import KvmPerfCalls
from vpmu_mode_emulated.reprogram import kvm_pmu_handle_event, pmc_stop_counter
from vpmu_mode_emulated.vlbr import Vlbr

log = get_logger("vpmu.mode_emulated")


class EmulatedMode:
    """See the module docstring. One instance per composed host."""

    name = "emulated"

    def __init__(self, model: Any, options: dict[str, Any]) -> None:
        self.model = model
        self.lazy_release = parse_bool("mode_options.lazy_release", options.get("lazy_release", True))
        #: kvm_pmu_cap (kvm_init_pmu_capability): v2 and 3 fixed counters unless the
        #: documented research option lifts the version cap
        self.kvm_caps: KvmPmuCaps = KVM_7_0
        if parse_bool("mode_options.upgrade_v5", options.get("upgrade_v5", False)):
            self.kvm_caps = KvmPmuCaps(max_version=UPGRADE_V5_VERSION)
        self.host: Any = None
        #: live vCPUs (their KVM state is watched at host perf reschedules)
        self._vcpus: list[Any] = []
        #: host CPU -> the vCPU loaded there (kvm_arch_vcpu_load .. put): a host reschedule
        #: re-evaluates only that vCPU, not every vCPU of the host
        self._loaded: dict[int, Any] = {}
        #: every vCPU created, destroyed ones included: the report keeps their figures
        self._reported: list[Any] = []

    @hookimpl
    def vpmu_host_created(self, host: Any) -> None:
        """Watch host perf reschedules: they are when a guest counter can lose (or regain)
        its hardware counter without KVM doing anything."""
        self.host = host
        host.perf.on_resched.append(self._on_resched)

    # ---- helpers ------------------------------------------------------------------------
    @staticmethod
    def kpmu(vcpu: Any) -> KvmPmu:
        return vcpu.mode_state

    @hookimpl
    def vpmu_limit_guest_pmu(self, cfg: Any) -> Any:
        """`kvm_pmu_cap` (vpmu_core.hv.kvm_caps, shared with the mediated mode): version 2
        (`kvm_init_pmu_capability`) and at most 3 fixed counters
        (KVM_MAX_NR_INTEL_FIXED_COUNTERS; `intel_pmu_refresh` clamps CPUID.0AH:EDX to it).
        Fixed counter 3 (topdown slots) has no perf event KVM could create for it anyway."""
        return self.kvm_caps.limit(cfg)

    def _api(self, vcpu: Any) -> KvmPerfCalls:
        return self.kpmu(vcpu).api

    def _on_resched(self, cpu: int) -> None:
        vcpu = self._loaded.get(cpu)
        if vcpu is not None and vcpu.loaded_on == cpu:
            silent.update(self.kpmu(vcpu))

    def _facility_of(self, kpmu: KvmPmu, msr: int) -> Vlbr | None:
        for v in kpmu.vlbrs.values():
            if v.state.has_msr(msr):
                return v
        return None

    def _on_controls(self, kpmu: KvmPmu, mask: int) -> None:
        """A vendor control write changed the controls of the pmcs in `mask`: request a
        reprogram of those whose control signature really changed."""
        changed = 0
        for i, kp in kpmu.pmcs.items():
            if not mask >> i & 1:
                continue
            sig = control_signature(kp.pmc)
            if kpmu.signatures.get(i) != sig:
                kpmu.signatures[i] = sig
                changed |= 1 << i
        kpmu.last_changed |= changed
        kpmu.request_reprogram(changed)

    # ---- VM / vCPU lifecycle ------------------------------------------------------------
    @hookimpl
    def vpmu_vcpu_create(self, vcpu: Any) -> None:
        kpmu = KvmPmu(vcpu)
        api = KvmPerfCalls(vcpu, kpmu.stats)
        pmu = vcpu.pmu
        for p in pmu.pmcs:
            kp = KvmPmc(p)
            kp.counter = p.value & p.mask
            kpmu.pmcs[p.idx] = kp
            kpmu.signatures[p.idx] = control_signature(p)
            # every selector alias (KVM kvm_pmu_mark_pmc_in_use -> msr_idx_to_pmc, AMD
            # get_gp_pmc_amd: the K7 EVNTSELx name the same pmc as PERF_CTLx)
            for m in pmu.eventsel_msrs(p):
                kpmu.msr_to_idx[m] = p.idx
            for m in pmu.counter_msrs(p):
                kpmu.msr_to_idx[m] = p.idx
        for name, state in vcpu.facilities.items():
            if getattr(state, "resource", None):
                kpmu.vlbrs[name] = Vlbr(kpmu, api, name, state)
        kpmu.api = api
        vcpu.mode_state = kpmu
        pmu.backend = EmulatedBackend(kpmu, api)
        pmu.control_listeners.append(lambda mask: self._on_controls(kpmu, mask))
        self._vcpus.append(vcpu)
        self._reported.append(vcpu)
        # Whatever the vendor's reset state enables gets its event at the first entry.
        kpmu.request_reprogram(kpmu.all_valid_pmc_idx)

    @hookimpl
    def vpmu_vm_destroy(self, vm: Any) -> None:
        """kvm_arch_vcpu_destroy -> kvm_pmu_destroy -> kvm_pmu_reset: `pmc_stop_counter` on
        every counter (fold the count, `pmc_release_perf_event`), then the vendor part
        (intel_pmu_destroy / `intel_pmu_release_guest_lbr_event`: the vLBR event). Perf frees
        their counters and the LBR at once (perf_event_release_kernel ->
        __perf_remove_from_context: event_sched_out, no reschedule, so a host event waiting
        for them gets them at its next reschedule or mux rotation). KVM then
        zeroes the counters and frees the vCPU; the model keeps the folded values so the
        report shows what the guest would have read at destroy time."""
        for vcpu in vm.vcpus:
            kpmu = self.kpmu(vcpu)
            if kpmu is None:
                continue
            api = self._api(vcpu)
            kpmu.need_cleanup = False
            kpmu.req_pmu = False
            kpmu.reprogram_pmi = 0
            for kp in kpmu.pmcs.values():
                pmc_stop_counter(kp, api)
            for v in kpmu.vlbrs.values():
                v.release()
            silent.close_all(kpmu)
            if vcpu in self._vcpus:
                self._vcpus.remove(vcpu)

    @hookimpl
    def vpmu_vcpu_load(self, vcpu: Any, cpu: Any) -> None:
        """kvm_arch_vcpu_load: after a sched-out, if KVM holds perf events, schedule the
        lazy release (`need_cleanup` + KVM_REQ_PMU)."""
        self._loaded[cpu.index] = vcpu
        kpmu = self.kpmu(vcpu)
        if kpmu.scheduled_out:
            kpmu.scheduled_out = False
            if self.lazy_release and vcpu.pmu.version and kpmu.event_count:
                kpmu.need_cleanup = True
                kpmu.req_pmu = True
        # silent errors are re-evaluated at the coming VM-entry (nothing runs before it)

    @hookimpl
    def vpmu_vcpu_put(self, vcpu: Any, cpu: Any) -> None:
        kpmu = self.kpmu(vcpu)
        kpmu.scheduled_out = True
        silent.close_all(kpmu)
        if self._loaded.get(cpu.index) is vcpu:
            del self._loaded[cpu.index]

    @hookimpl
    def vpmu_vm_entry(self, vcpu: Any) -> None:
        """vcpu_enter_guest request processing: KVM_REQ_PMU, then (core) KVM_REQ_PMI."""
        kpmu = self.kpmu(vcpu)
        if kpmu.req_pmu:
            kpmu.req_pmu = False
            kpmu.stats["req_pmu_serviced"] += 1
            kvm_pmu_handle_event(kpmu, self._api(vcpu))
        for v in kpmu.vlbrs.values():
            v.before_entry()
        silent.update(kpmu)

    # ---- interception -----------------------------------------------------------------
    @hookimpl
    def vpmu_msr_intercepted(self, vcpu: Any, msr: int, write: bool) -> bool | None:
        """Every PMU MSR exits; only a facility's record MSRs may pass through, and only
        while its vLBR event is ACTIVE."""
        kpmu = self.kpmu(vcpu)
        if kpmu.vlbrs:
            v = self._facility_of(kpmu, msr)
            if v is not None and not v.intercepted(msr):
                return False
        return True

    @hookimpl
    def vpmu_rdpmc_intercepted(self, vcpu: Any) -> bool | None:
        return True

    @hookimpl
    def vpmu_guest_wrmsr(self, vcpu: Any, msr: int, value: int) -> bool | None:
        """kvm_pmu_set_msr: mark the counter in use, write the vendor's register (its #GP
        rules), which requests the reprogram through the control listener."""
        kpmu = self.kpmu(vcpu)
        vcpu.charge("kvm_emulated_msr_access", vcpu.costs.kvm_emulated_msr_access)
        v = self._facility_of(kpmu, msr) if kpmu.vlbrs else None
        if v is not None:
            v.write(msr, value)
            return True
        pmu = vcpu.pmu
        if not pmu.has_msr(msr):
            return None
        idx = kpmu.msr_to_idx.get(msr)
        if idx is not None:
            kpmu.pmc_in_use |= 1 << idx
        kpmu.last_changed = 0
        pmu.wrmsr(msr, value)
        if msr == pmu.fixed_ctrl_msr():
            # reprogram_fixed_counters: only the fields that changed are marked in use
            for i in bits(kpmu.last_changed):
                if kpmu.pmcs[i].pmc.is_fixed:
                    kpmu.pmc_in_use |= 1 << i
        return True

    @hookimpl
    def vpmu_guest_rdmsr(self, vcpu: Any, msr: int) -> int | None:
        kpmu = self.kpmu(vcpu)
        vcpu.charge("kvm_emulated_msr_access", vcpu.costs.kvm_emulated_msr_access)
        v = self._facility_of(kpmu, msr) if kpmu.vlbrs else None
        if v is not None:
            return v.read(msr)
        if not vcpu.pmu.has_msr(msr):
            return None
        return int(vcpu.pmu.rdmsr(msr))

    @hookimpl
    def vpmu_guest_rdpmc(self, vcpu: Any, ecx: int) -> int | None:
        """kvm_pmu_rdpmc: the vendor decodes ECX (#GP rules), the backend gives the value."""
        vcpu.charge("kvm_emulated_msr_access", vcpu.costs.kvm_emulated_msr_access)
        return int(vcpu.pmu.rdpmc(ecx))

    # ---- emulated instruction counting ------------------------------------------------------
    @hookimpl
    def vpmu_instruction_retired(self, vcpu: Any) -> None:
        """kvm_skip_emulated_instruction() -> kvm_pmu_instruction_retired(), inside the exit
        after the instruction took effect; the increment reaches the counter at the
        KVM_REQ_PMU service of the next VM-entry."""
        instructions.instruction_retired(self.kpmu(vcpu))

    # ---- event filter -----------------------------------------------------------------------
    @hookimpl
    def vpmu_filter_changed(self, vcpu: Any) -> None:
        """KVM_SET_PMU_EVENT_FILTER: every counter is re-evaluated before the next entry."""
        kpmu = self.kpmu(vcpu)
        kpmu.request_reprogram(kpmu.all_valid_pmc_idx)
        # kvm_make_all_cpus_request kicks a vCPU that is in guest mode: an IPI VM-exit,
        # so the filter is in force from the entry right after the ioctl.
        vcpu.kick("external_interrupt")

    # ---- migration ---------------------------------------------------------------------------
    @hookimpl
    def vpmu_vcpu_restore_state(self, vcpu: Any, state: dict) -> None:
        """KVM_SET_MSRS done by the core; every counter is reprogrammed before KVM_RUN."""
        kpmu = self.kpmu(vcpu)
        kpmu.request_reprogram(kpmu.all_valid_pmc_idx)

    @hookimpl
    def vpmu_fast_forward_state(self, vcpu: Any) -> Hashable | None:
        """The `struct kvm_pmu` flags an exit depends on (pending KVM_REQ_PMU, reprogram
        bits, lazy release) and which perf event backs each counter, paused or not."""
        kpmu = self.kpmu(vcpu)
        if kpmu.busy or kpmu.vlbrs:
            return None
        pmcs = tuple(
            (
                idx,
                kp.is_paused,
                kp.current_config,
                kp.intr,
                kp.ever_active,
                None if kp.perf_event is None else kp.perf_event.id,
            )
            for idx, kp in sorted(kpmu.pmcs.items())
        )
        return (
            "emulated",
            kpmu.req_pmu,
            kpmu.reprogram_pmi,
            kpmu.pmc_in_use,
            kpmu.need_cleanup,
            kpmu.scheduled_out,
            self._loaded.get(vcpu.cpu.index) is vcpu,
            pmcs,
        )

    # ---- reports ------------------------------------------------------------------------------
    @hookimpl
    def vpmu_guest_counter_values(self, vcpu: Any) -> dict[str, int]:
        """What the guest would read from each counter now (pmc_read_counter)."""
        kpmu = self.kpmu(vcpu)
        return {kp.name: pmc_read_counter(kp) for kp in kpmu.pmcs.values()}

    @hookimpl
    def vpmu_mode_report(self, host: Any) -> dict[str, Any]:
        """Perf API calls KVM made, reuse vs recreate, overflows and PMIs, per vCPU and total."""
        total: Counter[str] = Counter()
        per_vcpu: dict[str, dict[str, int]] = {}
        for vcpu in self._reported:
            st = self.kpmu(vcpu).stats
            per_vcpu[vcpu.name] = dict(sorted(st.items()))
            total.update(st)
        perf_calls = {
            k: total.get(k, 0)
            for k in (
                "perf_event_create",
                "perf_event_release",
                "perf_event_pause",
                "perf_event_period",
                "perf_event_enable",
                "perf_event_reprogram",
            )
        }
        return {
            "mode": self.name,
            "perf_api_calls": perf_calls,
            "perf_api_calls_total": sum(
                perf_calls[k]
                for k in (
                    "perf_event_create",
                    "perf_event_release",
                    "perf_event_pause",
                    "perf_event_period",
                    "perf_event_enable",
                )
            ),
            "reprogram": {
                "reuse": total.get("reprogram_reuse", 0),
                "recreate": total.get("reprogram_recreate", 0),
                "left_paused": total.get("reprogram_left_paused", 0),
                "create_failed": total.get("create_failed", 0),
                "lazy_releases": total.get("lazy_releases", 0),
            },
            "overflows": {
                "from_perf": total.get("overflows_from_perf", 0),
                "emulated": total.get("overflows_emulated", 0),
                "ignored": total.get("overflows_ignored", 0),
                "pmi_requests": total.get("pmi_requests", 0),
            },
            "emulated_events": total.get("emulated_events", 0),
            "vcpus": per_vcpu,
        }
