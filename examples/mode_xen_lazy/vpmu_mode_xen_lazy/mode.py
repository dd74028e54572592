"""The `xen_lazy` mode: Xen's vPMU as the hypervisor hooks of vpmu.

What Xen does, and where it happens here:

- Every guest PMU MSR access (and RDPMC) is trapped and handled on the vCPU's PMU context
  (`vpmu_do_wrmsr` / `vpmu_do_rdmsr` -> `core2_vpmu_do_wrmsr`, `amd_vpmu_do_wrmsr`). The
  vendor's guest-visible register model (`vcpu.pmu`) applies every #GP rule.
- The whole context is loaded into the physical PMU at vCPU schedule-in
  (`vpmu_load(v, 0)` from `context_switch`), but lazily: only if the guest PMU is counting
  (`VPMU_RUNNING`: some counter enabled locally and globally); otherwise at the first
  trapped PMU access (`core2_vpmu_msr_common_check` -> `__core2_vpmu_load`,
  `amd_vpmu_do_wrmsr` -> `context_load`).
- It is saved at schedule-out (`vpmu_save` from `context_switch`), never at VM-exit: the
  counters keep the guest's values while Xen handles exits. They do not count Xen's own
  work: on Intel the guest GLOBAL_CTRL is loaded at VM-entry and 0 is loaded at VM-exit
  (the VMCS MSR load lists, `vmx_add_guest_msr(MSR_CORE_PERF_GLOBAL_CTRL)`); on AMD every
  selector Xen writes carries GuestOnly (`amd_vpmu_do_wrmsr` -> `set_guest_mode`).
- Guest limits: Intel guests get at most architectural PMU version 3 and 3 fixed counters
  (`core2_vpmu_init`: `arch_pmc_cnt`, `fixed_pmc_cnt = min(.., 3)`, version capped at 3);
  AMD guests get no PerfMonV2 (vpmu_amd.c knows only the legacy and F15h counter MSRs).
- A counter overflow while the context is loaded is the guest's PMI (`vpmu_do_interrupt`
  -> `vlapic_set_irq` through the guest's LVTPC).

Host perf coexistence (the choice this model makes, and what the report measures): Xen
itself does not profile while a guest owns the PMU, so while a guest context is loaded on
a CPU every host perf event of that CPU is scheduled out (`load_guest_context`), from the
load to the save: host perf is blind there to guest and hypervisor work alike. The report's
`blind_window_ns` is the host-mode time inside those windows, `host_loss` in the core
report shows what host events lost.

Deviation, as an option: Xen does not count the instructions it emulates (a trapped WRMSR
never retires in the counters). The default `emulated_instructions=count` follows the
counting rule every vpmu mode keeps (DESIGN §5: counted after it took effect, as KVM's
`kvm_pmu_instruction_retired`); `emulated_instructions=xen` models Xen as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vpmu_core.api import EMULATED_INSTRUCTION, ConfigError, EventKind, get_logger, hookimpl, parse_bool
from vpmu_mode_xen_lazy.options import OPTIONS

log = get_logger("vpmu.mode.xen_lazy")

#: Xen's guest limits (core2_vpmu_init; vpmu_amd.c)
INTEL_MAX_VERSION = 3
INTEL_MAX_FIXED = 3
AMD_MAX_VERSION = 1  # no PerfMonV2

_INSTRUCTIONS = int(EventKind.INSTRUCTIONS)


@dataclass
class XenVpmu:
    """One vCPU's `struct vpmu_struct`: where its context is and why."""

    loaded_cpu: int | None = None
    #: VPMU_RUNNING: some counter enabled (local and global) at the last save/access
    running: bool = False
    loads: int = 0
    lazy_loads: int = 0
    saves: int = 0
    #: blind-window bookkeeping: CPU clock and guest cycles at the load
    load_clock: int = 0
    load_guest_cycles: int = 0
    blind_cycles: int = 0


class XenLazyMode:
    """See the module docstring. One instance per composed host."""

    def __init__(self, model: Any, options: dict[str, Any]) -> None:
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise ConfigError("mode_options", f"unknown option(s) {sorted(unknown)}", ", ".join(OPTIONS))
        if model.vendor not in ("intel", "amd"):
            raise ConfigError("cpu", f"Xen's vPMU has Intel and AMD back ends only, not {model.vendor!r}", "intel, amd")
        self.model = model
        self.lazy = parse_bool("mode_options.lazy", options.get("lazy", True))
        emu = str(options.get("emulated_instructions", "count"))
        if emu not in ("count", "xen"):
            raise ConfigError("mode_options.emulated_instructions", f"got {emu!r}", "count, xen")
        self.count_emulated = emu == "count"
        self.host: Any = None
        self.loaded: dict[int, Any] = {}
        self.vcpus: list[Any] = []

    @hookimpl
    def vpmu_host_created(self, host: Any) -> None:
        self.host = host

    # ---- guest limits ---------------------------------------------------------------------
    @hookimpl
    def vpmu_limit_guest_pmu(self, cfg: Any) -> Any:
        """Xen's caps on what a guest gets (applied like KVM's refresh, then re-clamped by
        the vendor)."""
        update: dict[str, int] = {}
        if self.model.vendor == "intel":
            if cfg.version is not None and cfg.version > INTEL_MAX_VERSION:
                update["version"] = INTEL_MAX_VERSION
            if cfg.fixed_counters is not None and cfg.fixed_counters > INTEL_MAX_FIXED:
                update["fixed_counters"] = INTEL_MAX_FIXED
        elif cfg.version is not None and cfg.version > AMD_MAX_VERSION:
            update["version"] = AMD_MAX_VERSION
        return cfg.model_copy(update=update) if update else cfg

    # ---- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _st(vcpu: Any) -> XenVpmu:
        return vcpu.mode_state

    @staticmethod
    def _counting(guest: Any) -> bool:
        """VPMU_RUNNING (core2_vpmu_do_wrmsr: global_ctrl & enabled counters)."""
        return any(p.local_en and p.global_en and p.event is not None for p in guest.pmcs)

    @staticmethod
    def _guest_ctrl(guest: Any) -> int:
        msr = guest.global_msrs().get("ctrl")
        return guest.rdmsr(msr) if msr is not None else guest.all_counter_mask

    def _apply_ctrl(self, vcpu: Any, hw: Any, value: int) -> None:
        """The guest's global enable in hardware: Intel through the VM-entry load, with the
        live (host-mode) GLOBAL_CTRL kept 0 (what VM-exit loads: Xen's host value); AMD
        written directly (GuestOnly selectors keep Xen's work out)."""
        ctrl = hw.global_msrs().get("ctrl")
        if ctrl is None:
            return
        if hw.atomic_global_ctrl_switch:
            # the live register is what counts host-mode work: the VM-entry load does not
            # change it (its reset value enables every GP counter)
            if hw.rdmsr(ctrl):
                hw.wrmsr(ctrl, 0)
            loads = dict(hw.entry_loads)
            loads[ctrl] = value
            hw.set_entry_loads(loads)  # replaces the whole list: keep the other entries
        else:
            hw.wrmsr(ctrl, value)

    def _write_controls(self, vcpu: Any, hw: Any) -> int:
        """Selectors and the fixed control from the guest context into hardware; WRMSRs."""
        guest = vcpu.pmu
        n = 0
        for p in guest.gp:
            sel = guest.eventsel_msr(p)
            h = hw.pmc(p.idx)
            if sel is None or h is None:
                continue
            value = guest.rdmsr(sel)
            hw.wrmsr(hw.eventsel_msr(h), hw.hw_eventsel(value) if value else 0)
            n += 1
        fc = guest.fixed_ctrl_msr()
        if fc is not None and guest.fixed and hw.fixed_ctrl_msr() is not None:
            hw.wrmsr(hw.fixed_ctrl_msr(), guest.rdmsr(fc))
            n += 1
        return n

    # ---- load / save (vpmu_load / vpmu_save) ---------------------------------------------------
    def _load(self, vcpu: Any, lazy: bool) -> None:
        st = self._st(vcpu)
        cpu = vcpu.cpu
        if st.loaded_cpu == cpu.index:
            return
        if st.loaded_cpu is not None:
            self._save(vcpu)
        other = self.loaded.get(cpu.index)
        if other is not None:
            self._save(other)
        hw, guest = cpu.pmu, vcpu.pmu
        self.host.perf.load_guest_context(cpu.index)  # the host-perf choice: see the docstring
        self._apply_ctrl(vcpu, hw, 0)
        writes = 1
        for p in guest.pmcs:
            h = hw.pmc(p.idx)
            if h is not None:
                hw.write_counter(h, guest.read_counter(p))
                writes += 1
        writes += self._write_controls(vcpu, hw)
        hw.set_global_status(guest.global_status & guest.all_counter_mask)
        self._apply_ctrl(vcpu, hw, self._guest_ctrl(guest))
        st.loaded_cpu = cpu.index
        self.loaded[cpu.index] = vcpu
        st.loads += 1
        st.lazy_loads += lazy
        st.load_clock = cpu.now
        st.load_guest_cycles = vcpu.stats.guest_cycles
        vcpu.charge("xen_vpmu_load", writes * vcpu.costs.wrmsr_pmu, writes)

    def _pull(self, vcpu: Any) -> None:
        """Live counters and status from hardware into the context (no hardware change)."""
        st = self._st(vcpu)
        if st.loaded_cpu is None:
            return
        hw, guest = self.host.cpus[st.loaded_cpu].pmu, vcpu.pmu
        for p in guest.pmcs:
            h = hw.pmc(p.idx)
            if h is not None and h.value != guest.read_counter(p):
                guest.write_counter(p, h.value)
        guest.set_global_status(hw.global_status & guest.all_counter_mask)

    def _push(self, vcpu: Any) -> None:
        """The context into the loaded hardware after a trapped access changed it."""
        st = self._st(vcpu)
        if st.loaded_cpu is None:
            return
        hw, guest = self.host.cpus[st.loaded_cpu].pmu, vcpu.pmu
        for p in guest.pmcs:
            h = hw.pmc(p.idx)
            if h is not None and h.value != guest.read_counter(p):
                hw.write_counter(h, guest.read_counter(p))
        self._write_controls(vcpu, hw)
        hw.set_global_status(guest.global_status & guest.all_counter_mask)
        self._apply_ctrl(vcpu, hw, self._guest_ctrl(guest))

    def _save(self, vcpu: Any) -> None:
        st = self._st(vcpu)
        if st.loaded_cpu is None:
            return
        cpu = self.host.cpus[st.loaded_cpu]
        hw, guest = cpu.pmu, vcpu.pmu
        self._apply_ctrl(vcpu, hw, 0)
        self._pull(vcpu)
        reads = len(guest.pmcs)
        writes = 1
        for p in guest.pmcs:
            h = hw.pmc(p.idx)
            if h is None:
                continue
            if h.value:
                hw.write_counter(h, 0)
                writes += 1
            sel = hw.eventsel_msr(h)
            if sel is not None and hw.rdmsr(sel):
                hw.wrmsr(sel, 0)
                writes += 1
        fc = hw.fixed_ctrl_msr()
        if fc is not None and guest.fixed and hw.rdmsr(fc):
            hw.wrmsr(fc, 0)
            writes += 1
        hw.set_global_status(0)
        st.running = self._counting(guest)
        st.blind_cycles += max(0, (cpu.now - st.load_clock) - (vcpu.stats.guest_cycles - st.load_guest_cycles))
        st.loaded_cpu = None
        st.saves += 1
        del self.loaded[cpu.index]
        self.host.perf.put_guest_context(cpu.index)
        vcpu.charge("xen_vpmu_save", reads * vcpu.costs.rdpmc + writes * vcpu.costs.wrmsr_pmu, reads + writes)

    def _access(self, vcpu: Any) -> None:
        """A trapped PMU access: the context is loaded now if it was not (lazy load)."""
        if self._st(vcpu).loaded_cpu is None:
            self._load(vcpu, lazy=True)
        self._pull(vcpu)

    # ---- VM / vCPU lifecycle ----------------------------------------------------------------
    @hookimpl
    def vpmu_vcpu_create(self, vcpu: Any) -> None:
        vcpu.mode_state = XenVpmu()
        self.vcpus.append(vcpu)

    @hookimpl
    def vpmu_vm_destroy(self, vm: Any) -> None:
        # a half-built VM may have vCPUs without a context
        for v in vm.vcpus:
            if isinstance(v.mode_state, XenVpmu):
                self._save(v)

    @hookimpl
    def vpmu_vcpu_load(self, vcpu: Any, cpu: Any) -> None:
        st = self._st(vcpu)
        if st.running or not self.lazy:
            self._load(vcpu, lazy=False)

    @hookimpl
    def vpmu_vcpu_put(self, vcpu: Any, cpu: Any) -> None:
        self._save(vcpu)

    # ---- trapped accesses ---------------------------------------------------------------------
    @hookimpl
    def vpmu_guest_wrmsr(self, vcpu: Any, msr: int, value: int) -> bool | None:
        if not vcpu.pmu.has_msr(msr):
            return None  # a facility's or the LAPIC's: not the vPMU's
        self._access(vcpu)
        vcpu.pmu.wrmsr(msr, value)  # guest semantics: #GP, reserved bits
        self._st(vcpu).running = self._counting(vcpu.pmu)
        self._push(vcpu)
        return True

    @hookimpl
    def vpmu_guest_rdmsr(self, vcpu: Any, msr: int) -> int | None:
        if vcpu.pmu.has_msr(msr):
            self._access(vcpu)
        return None  # the core reads the (now current) context

    @hookimpl
    def vpmu_guest_rdpmc(self, vcpu: Any, ecx: int) -> int | None:
        self._access(vcpu)
        return None

    # ---- instructions Xen emulates ----------------------------------------------------------
    @hookimpl
    def vpmu_instruction_retired(self, vcpu: Any) -> None:
        """Counted after it took effect (DESIGN §5), where the context is now; real Xen
        (`emulated_instructions=xen`) counts none."""
        if not self.count_emulated:
            return
        st = self._st(vcpu)
        pmu = self.host.cpus[st.loaded_cpu].pmu if st.loaded_cpu is not None else vcpu.pmu
        own = {p.idx for p in vcpu.pmu.pmcs}
        plan = [e for e in pmu.plan(True) if e[0].idx in own and e[1] == _INSTRUCTIONS]
        for pmc, _ in pmu.accrue_plan(plan, EMULATED_INSTRUCTION, vcpu.cpl) or ():
            if pmu.raise_overflow(pmc):
                vcpu.request_pmi()

    # ---- PMIs ----------------------------------------------------------------------------------
    @hookimpl
    def vpmu_host_pmi(self, cpu: Any, pmc: Any, overshoot: int) -> bool | None:
        vcpu = self.loaded.get(cpu.index)
        if vcpu is None or vcpu.pmu.pmc(pmc.idx) is None:
            return None
        vcpu.request_pmi()  # vpmu_do_interrupt: through the guest's LVTPC at the next entry
        return True

    # ---- migration ------------------------------------------------------------------------------
    @hookimpl
    def vpmu_vcpu_save_state(self, vcpu: Any, state: dict) -> None:
        self._pull(vcpu)

    @hookimpl
    def vpmu_vcpu_restore_state(self, vcpu: Any, state: dict) -> None:
        self._st(vcpu).running = self._counting(vcpu.pmu)
        self._push(vcpu)

    # ---- reports -----------------------------------------------------------------------------
    @hookimpl
    def vpmu_guest_counter_values(self, vcpu: Any) -> dict[str, int]:
        st = self._st(vcpu)
        if st.loaded_cpu is not None:
            hw = self.host.cpus[st.loaded_cpu].pmu
            return {f"{p.idx:#x}": hw.pmc(p.idx).value for p in vcpu.pmu.pmcs}
        return {f"{p.idx:#x}": vcpu.pmu.read_counter(p) for p in vcpu.pmu.pmcs}

    @hookimpl
    def vpmu_mode_report(self, host: Any) -> dict[str, Any]:
        freq = host.freq_hz
        per_vcpu = {}
        blind_total = 0
        for v in self.vcpus:
            st = self._st(v)
            blind = st.blind_cycles
            if st.loaded_cpu is not None:
                cpu = host.cpus[st.loaded_cpu]
                blind += max(0, (cpu.now - st.load_clock) - (v.stats.guest_cycles - st.load_guest_cycles))
            blind_total += blind
            per_vcpu[v.name] = {
                "loads": st.loads,
                "lazy_loads": st.lazy_loads,
                "saves": st.saves,
                "blind_window_ns": blind * 1_000_000_000 // freq,
            }
        return {
            "lazy": self.lazy,
            "emulated_instructions": "count" if self.count_emulated else "xen",
            "host_perf": "scheduled out while a guest context is loaded",
            "blind_window_ns": blind_total * 1_000_000_000 // freq,
            "vcpus": per_vcpu,
        }
