"""The PMU context switch: `kvm_mediated_pmu_load` / `kvm_mediated_pmu_put` in the merged
order of operations (v6 27/44, 26/44, 34/44; facts kvm-vpmu.md §2.6), every MSR access
charged by the cost model so elision and the number of active counters show in the
numbers.

Load (IRQs off):
  1. perf_load_guest_context(): host events of the core PMU scheduled out (their enabled
     time stops: the `timeguest` clock);
  2. WRMSR GLOBAL_CTRL = 0;
  3. perf_load_guest_lvtpc(): host LVTPC -> the dedicated vector 0xF5;
  4. per guest GP counter: RDPMC, WRMSR the counter only if it differs (elision, v6 34/44),
     WRMSR the selector = eventsel_hw; per fixed counter: the same without a selector;
     unexposed counters are not touched (they are intercepted);
  5. vendor load: GLOBAL_STATUS made equal to the guest's (clear stale bits through the
     status-clear register, set the guest's through STATUS_SET), FIXED_CTR_CTRL =
     fixed_ctr_ctrl_hw, then GLOBAL_CTRL: VMX loads it at VM-entry from the VMCS
     (`set_entry_loads`, host value stays 0); SVM writes it (selectors carry GuestOnly so
     host-mode work is not counted).
Put (IRQs off):
  1. vendor put: SVM WRMSR GLOBAL_CTL = 0 (VMX: VM-exit already saved it and loaded 0);
     read GLOBAL_STATUS into the guest's, clear it if non-zero; zero FIXED_CTR_CTRL if
     non-zero;
  2. per guest counter: RDPMC into the guest's copy, zero the counter if non-zero, zero the
     selector if eventsel_hw is non-zero;
  3. perf_put_guest_lvtpc(): LVTPC back to NMI;  4. perf_put_guest_context().

Cost accounting: the per-counter RDPMC/WRMSR are charged one by one (`rdpmc`,
`wrmsr_pmu`); the unconditional global work (GLOBAL_CTRL, status read, FIXED_CTR_CTRL,
LVTPC twice, perf context) is `mediated_switch_fixed` per put+load pair, of which two
`lvtpc_switch` are shown separately; conditional extra writes (a non-zero status to clear
or set, a non-zero fixed control to zero) are charged as `wrmsr_pmu` on top. With the
defaults this reproduces the calibration of costs.md: Intel 8 GP + 3 fixed idle =
400 + 8 x 160 + 3 x 50 with elision, 400 + 8 x 245 + 3 x 135 without.
"""

from __future__ import annotations

from typing import Any

from vpmu_core.api import get_logger

from vpmu_mode_mediated.filtering import eventsel_hw, fixed_ctrl_hw
from vpmu_mode_mediated.options import MediatedOptions
from vpmu_mode_mediated.requirements import VendorRules
from vpmu_mode_mediated.state import CpuState, VcpuState

log = get_logger("vpmu.mode.mediated")


class SwitchStats:
    """Counts of what the switch did (reported by the mode)."""

    __slots__ = ("loads", "puts", "counter_writes", "elided_writes", "selector_writes", "global_ctrl_reads")
    loads: int
    puts: int
    counter_writes: int
    elided_writes: int
    selector_writes: int
    global_ctrl_reads: int

    def __init__(self) -> None:
        for s in self.__slots__:
            setattr(self, s, 0)

    def as_dict(self) -> dict[str, int]:
        return {s: getattr(self, s) for s in self.__slots__}


class Switcher:
    """Loads and puts guest PMU contexts on host CPUs. See module docstring."""

    def __init__(self, options: MediatedOptions, rules: VendorRules) -> None:
        self.options = options
        self.rules = rules
        self.host: Any = None
        self.cpus: list[CpuState] = []
        self.stats = SwitchStats()
        self.blind_cycles = 0
        self._hw_ctrl = 0
        self._hw_roles: dict[str, int] = {}
        self._exposure_cache: dict[tuple[int, int], tuple[Any, ...]] = {}
        #: (id(vcpu state), id(physical PMU)) -> the state, PMU and index tuples it was built
        #: for (checked by identity on every use) and the counter pairs
        self._pairs_cache: dict[tuple[int, int], tuple[Any, ...]] = {}

    def _pairs(self, vcpu: Any, hw: Any) -> tuple[tuple[int, Any, Any, int | None, int | None], ...]:
        """(idx, guest pmc, host pmc, guest selector MSR, host selector MSR) of every guest
        counter in load order (GP then fixed; fixed counters have no selector), for the
        physical PMU `hw`: looked up once per vCPU and CPU, not per counter per switch."""
        st: VcpuState = vcpu.mode_state
        guest = vcpu.pmu
        key = id(st), id(hw)
        c = self._pairs_cache.get(key)
        if c is not None and c[0] is st and c[1] is guest and c[2] is hw and c[3] is st.gp_idx and c[4] is st.fixed_idx:
            return c[5]
        out = []
        for idx in (*st.gp_idx, *st.fixed_idx):
            g = guest.pmc(idx)
            h = hw.pmc(idx)
            out.append((idx, g, h, guest.eventsel_msr(g), hw.eventsel_msr(h)))
        pairs = tuple(out)
        self._pairs_cache[key] = (st, guest, hw, st.gp_idx, st.fixed_idx, pairs)
        return pairs

    def attach(self, host: Any) -> None:
        self.host = host
        self.cpus = [CpuState(c.index) for c in host.cpus]
        self._hw_roles = dict(host.cpus[0].pmu.global_msrs())
        self._hw_ctrl = self._hw_roles["ctrl"]

    # ---- guest global control (KVM's pmu->global_ctrl) -----------------------------------------
    def guest_ctrl(self, vcpu: Any) -> int:
        """The guest's GLOBAL_CTRL; a guest without one (v1) has every counter enabled."""
        st: VcpuState = vcpu.mode_state
        msr = st.guest_globals.get("ctrl")
        if msr is None:
            return vcpu.pmu.all_counter_mask
        return vcpu.pmu.rdmsr(msr)

    def set_guest_ctrl(self, vcpu: Any, value: int) -> None:
        msr = vcpu.mode_state.guest_globals.get("ctrl")
        if msr is None:
            return
        pmu = vcpu.pmu
        pmu.host_initiated = True
        try:
            pmu.wrmsr(msr, value)
        finally:
            pmu.host_initiated = False

    def apply_guest_ctrl(self, vcpu: Any, charge: bool = True) -> None:
        """Make the loaded hardware count under the guest's current GLOBAL_CTRL (at load the
        SVM write is part of the fixed switch cost, so it is not charged again)."""
        hw = vcpu.cpu.pmu
        value = self.guest_ctrl(vcpu)
        if self.rules.atomic_global_ctrl:
            loads = dict(hw.entry_loads)
            loads[self._hw_ctrl] = value
            hw.set_entry_loads(loads)
        elif hw.rdmsr(self._hw_ctrl) != value:
            hw.wrmsr(self._hw_ctrl, value)
            if charge:
                vcpu.charge("mediated_wrmsr", self.host.costs.wrmsr_pmu)

    # ---- costs ----------------------------------------------------------------------------------
    def _ctrl_read_cycles(self) -> int:
        c = self.host.costs
        return int(c.mediated_global_ctrl_vmread) if self.rules.atomic_global_ctrl else int(c.rdmsr_pmu)

    def _fixed_share(self, vcpu: Any, half: int) -> None:
        """Half of the per-pair fixed cost (minus the per-exit GLOBAL_CTRL read, which every
        exit pays separately and the calibration's CPUID exits already contained)."""
        c = self.host.costs
        read = self._ctrl_read_cycles() if vcpu.mode_state.global_passthrough else 0
        rest = max(0, c.mediated_switch_fixed - 2 * c.lvtpc_switch - read)
        share = rest // 2 if half == 0 else rest - rest // 2
        vcpu.charge("lvtpc_switch", c.lvtpc_switch)
        if share:
            vcpu.charge("mediated_switch_fixed", share)

    def _charge(self, vcpu: Any, rdpmc: int, wrmsr: int) -> None:
        c = self.host.costs
        if rdpmc:
            vcpu.charge("mediated_rdpmc", rdpmc * c.rdpmc, rdpmc)
        if wrmsr:
            vcpu.charge("mediated_wrmsr", wrmsr * c.wrmsr_pmu, wrmsr)

    def exit_read_global_ctrl(self, vcpu: Any) -> None:
        """After every VM-exit KVM reads the guest GLOBAL_CTRL (VMX: VMCS field; SVM: RDMSR
        when writes are not intercepted), v6 27/44; only needed when it is passed through."""
        st: VcpuState = vcpu.mode_state
        if not st.global_passthrough or st.loaded_cpu is None:
            return
        self.stats.global_ctrl_reads += 1
        vcpu.charge("global_ctrl_read", self._ctrl_read_cycles())
        if not self.rules.atomic_global_ctrl:
            self.set_guest_ctrl(vcpu, vcpu.cpu.pmu.rdmsr(self._hw_ctrl))

    # ---- load -----------------------------------------------------------------------------------
    def load(self, vcpu: Any) -> None:
        st: VcpuState = vcpu.mode_state
        if not st.enabled:
            return
        cpu = vcpu.cpu
        cs = self.cpus[cpu.index]
        if cs.loaded is vcpu:
            return
        if cs.loaded is not None:
            self.put(cs.loaded)
        hw = cpu.pmu
        guest = vcpu.pmu
        host = self.host
        # blind window bookkeeping: the window opens now; cycles charged before the load but
        # not yet run, and the load's own cycles, are not KVM work hidden from host perf
        t0 = cpu.now
        pending0 = vcpu.pending_host_cycles
        ledger0 = host.costs_ledger.total(vcpu.name)
        if self._one_decode(vcpu, hw):
            with hw.batched_refresh():
                self._load(vcpu, st, cs, cpu, hw, guest)
        else:
            self._load(vcpu, st, cs, cpu, hw, guest)
        st.loads += 1
        self.stats.loads += 1
        st.load_cycles = t0
        st.load_guest_cycles = vcpu.stats.guest_cycles
        self._switch_facilities(vcpu, cpu, loading=True)
        st.load_offset = pending0 + host.costs_ledger.total(vcpu.name) - ledger0
        self._check_load(vcpu)

    def _one_decode(self, vcpu: Any, hw: Any) -> bool:
        """Whether the host reschedule (perf_load_guest_context / perf_put_guest_context) and
        the switch's own register sequence may share one PMU decode: only where nothing
        counts between them (inside an exit the cycles the switch charges run at its end,
        `charges_deferred`; outside one they run at once under the decode of the moment)
        and nobody observes the intermediate state (no host perf `on_resched` observer, no
        control listener on the physical PMU). Without any host event the reschedule
        writes nothing and has no decode to share: then the two stay apart, at no cost."""
        perf = self.host.perf
        return (
            bool(perf.events)
            and bool(getattr(vcpu, "charges_deferred", False))
            and not perf.on_resched
            and not hw.control_listeners
        )

    def _load(self, vcpu: Any, st: VcpuState, cs: CpuState, cpu: Any, hw: Any, guest: Any) -> None:
        """Load steps 1-5 (see the module docstring)."""
        # 1. schedule host events of the core PMU out (RFC v1: !exclude_guest ones to ERROR)
        self.host.perf.load_guest_context(cpu.index, error_include_guest=self.options.host_policy == "rfc1")
        # 2-5 are one atomic register sequence (nothing counts in it): one PMU decode
        with hw.batched_refresh():
            # 2. global control off while the registers change
            hw.wrmsr(self._hw_ctrl, 0)
            # 3. guest LVTPC: the dedicated vector
            cs.lvtpc = "vpmi"
            self._fixed_share(vcpu, 0)
            # 4. counters and selectors
            rdpmc = wrmsr = 0
            elide = self.options.elide_writes
            stats = self.stats
            for idx, g, h, g_sel, h_sel in self._pairs(vcpu, hw):
                value = g.value & g.mask
                # v6 34/44: skip the counter WRMSR when RDPMC shows hardware already holds it
                if elide:
                    rdpmc += 1
                if elide and h.value == value:
                    stats.elided_writes += 1
                else:
                    hw.write_counter(h, value)
                    wrmsr += 1
                    stats.counter_writes += 1
                if h_sel is not None:
                    sel = eventsel_hw(vcpu, idx, g_sel, hw)
                    hw.wrmsr(h_sel, sel)
                    st.eventsel_hw[idx] = sel
                    wrmsr += 1
                    stats.selector_writes += 1
            # 5. vendor load: status, fixed control, global control
            wrmsr += self._sync_status(hw, guest.global_status & guest.all_counter_mask)
            if st.fixed_ctrl_msr is not None:
                st.fixed_ctrl_hw = fixed_ctrl_hw(vcpu, st.fixed_ctrl_msr)
                hw.wrmsr(hw.fixed_ctrl_msr(), st.fixed_ctrl_hw)
            st.loaded_cpu = cpu.index
            st.filter_dirty = False
            cs.loaded = vcpu
            # the global control is the last write of the same sequence (VMX: the VMCS
            # field VM-entry loads), so it shares the sequence's one decode
            self.apply_guest_ctrl(vcpu, charge=False)
        self._charge(vcpu, rdpmc, wrmsr)

    def _switch_facilities(self, vcpu: Any, cpu: Any, loading: bool) -> None:
        """`facilities=passthrough`: move each facility's state with the PMU (the facility
        decides how: XSAVES/XRSTORS for Arch LBR, MSR by MSR for legacy LBR) and charges it."""
        if self.options.facilities != "passthrough":
            return
        for name, g in sorted(vcpu.facilities.items()):
            hw = cpu.facilities.get(name)
            fn = getattr(g, "switch_in" if loading else "switch_out", None)
            if hw is not None and fn is not None:
                fn(hw, vcpu.costs, vcpu.charge)

    def _sync_status(self, hw: Any, want: int) -> int:
        """Make hardware GLOBAL_STATUS equal `want` (guest counter bits); returns WRMSRs."""
        roles = self._hw_roles
        have = hw.global_status
        toggle = have ^ want
        n = 0
        clear = have & toggle
        if clear:
            hw.wrmsr(roles["status_clr"], clear)
            n += 1
        setb = want & toggle
        if setb:
            hw.wrmsr(roles["status_set"], setb)
            n += 1
        return n

    # ---- put ------------------------------------------------------------------------------------
    def put(self, vcpu: Any) -> None:
        st: VcpuState = vcpu.mode_state
        if st is None or st.loaded_cpu is None:
            return
        cpu = vcpu.host.cpus[st.loaded_cpu]
        hw = cpu.pmu
        if self._one_decode(vcpu, hw):
            with hw.batched_refresh():
                self._put(vcpu, st, cpu, hw)
        else:
            self._put(vcpu, st, cpu, hw)

    def _put(self, vcpu: Any, st: VcpuState, cpu: Any, hw: Any) -> None:
        """Put steps 1-4 (see the module docstring)."""
        cs = self.cpus[cpu.index]
        guest = vcpu.pmu
        rdpmc = wrmsr = 0
        blind = self._window_cycles(vcpu, cpu)
        # 1-2 are one atomic register sequence (nothing counts in it): one PMU decode
        with hw.batched_refresh():
            # 1. vendor put
            if self.rules.atomic_global_ctrl:
                # VM-exit saved GLOBAL_CTRL into the VMCS and loaded the host value (0)
                loads = dict(hw.entry_loads)
                loads[self._hw_ctrl] = 0
                hw.set_entry_loads(loads)
            else:
                if st.global_passthrough:
                    self.set_guest_ctrl(vcpu, hw.rdmsr(self._hw_ctrl))
                hw.wrmsr(self._hw_ctrl, 0)
            status = hw.global_status
            guest.set_global_status(status & guest.all_counter_mask)
            if status:
                hw.wrmsr(self._hw_roles["status_clr"], status)
                wrmsr += 1
            if st.fixed_ctrl_msr is not None and st.fixed_ctrl_hw:
                hw.wrmsr(hw.fixed_ctrl_msr(), 0)
                st.fixed_ctrl_hw = 0
                wrmsr += 1
            # 2. counters: save (RDPMC), zero what is non-zero; GP selectors too
            backend_write = guest.backend.write
            sels = st.eventsel_hw
            for idx, g, h, _, h_sel in self._pairs(vcpu, hw):
                rdpmc += 1
                value = h.value
                backend_write(g, value)
                if value:
                    hw.write_counter(h, 0)
                    wrmsr += 1
                if sels.get(idx):
                    hw.wrmsr(h_sel, 0)
                    sels[idx] = 0
                    wrmsr += 1
        self._charge(vcpu, rdpmc, wrmsr)
        self._switch_facilities(vcpu, cpu, loading=False)
        # 3. LVTPC back to NMI
        cs.lvtpc = "nmi"
        self._fixed_share(vcpu, 1)
        self._check_put(vcpu, cpu)
        st.loaded_cpu = None
        cs.loaded = None
        st.puts += 1
        self.stats.puts += 1
        st.blind_cycles += blind
        self.blind_cycles += blind
        # 4. host events back in
        self.host.perf.put_guest_context(cpu.index)

    def _window_cycles(self, vcpu: Any, cpu: Any) -> int:
        """The blind window of the loaded context so far: host-mode cycles that ran while
        host perf was scheduled out, minus the load's own switch cycles. That is KVM work
        host perf cannot profile (Sean: "the kernel absolutely needs to be able to profile
        KVM itself"): fastpath handling under `run_loop`, every in-kernel exit under
        `vcpu_run`, next to nothing under `exit`. Cycles charged but not yet run when put
        starts are run after put, where host perf sees them."""
        st: VcpuState = vcpu.mode_state
        host_cycles = (cpu.now - st.load_cycles) - (vcpu.stats.guest_cycles - st.load_guest_cycles)
        return max(0, host_cycles - st.load_offset)

    def open_blind_cycles(self, vcpu: Any) -> int:
        """Blind cycles of the context loaded now (not yet closed by a put)."""
        st: VcpuState = vcpu.mode_state
        if st is None or st.loaded_cpu is None:
            return 0
        return self._window_cycles(vcpu, vcpu.host.cpus[st.loaded_cpu])

    # ---- state sync while loaded (intercepted accesses, migration, reports) ------------------
    def pull(self, vcpu: Any) -> None:
        """Copy the live guest state from hardware into `vcpu.pmu` (no hardware change)."""
        st: VcpuState = vcpu.mode_state
        if st.loaded_cpu is None:
            return
        hw = vcpu.host.cpus[st.loaded_cpu].pmu
        guest = vcpu.pmu
        for idx in st.gp_idx + st.fixed_idx:
            guest.backend.write(guest.pmc(idx), hw.pmc(idx).value)
        guest.set_global_status(hw.global_status & guest.all_counter_mask)
        if st.global_passthrough and not self.rules.atomic_global_ctrl:
            self.set_guest_ctrl(vcpu, hw.rdmsr(self._hw_ctrl))

    def push(self, vcpu: Any) -> None:
        """Make the loaded hardware match `vcpu.pmu` after an emulated write changed it."""
        st: VcpuState = vcpu.mode_state
        if st.loaded_cpu is None:
            return
        hw = vcpu.host.cpus[st.loaded_cpu].pmu
        guest = vcpu.pmu
        wrmsr = 0
        for idx in st.gp_idx + st.fixed_idx:
            g = guest.pmc(idx)
            h = hw.pmc(idx)
            if h.value != g.value:
                hw.write_counter(h, g.value)
                wrmsr += 1
        wrmsr += self._sync_status(hw, guest.global_status & guest.all_counter_mask)
        for idx in st.gp_idx:
            wrmsr += self.reprogram_selector(vcpu, idx, charge=False)
        wrmsr += self.reprogram_fixed_ctrl(vcpu, charge=False)
        self._charge(vcpu, 0, wrmsr)
        self.apply_guest_ctrl(vcpu)

    def reprogram_selector(self, vcpu: Any, idx: int, charge: bool = True) -> int:
        """Write eventsel_hw of one guest GP counter into the loaded hardware if it changed."""
        st: VcpuState = vcpu.mode_state
        if st.loaded_cpu is None:
            return 0
        sel = eventsel_hw(vcpu, idx)
        if st.eventsel_hw.get(idx) == sel:
            return 0
        hw = vcpu.host.cpus[st.loaded_cpu].pmu
        hw.wrmsr(hw.eventsel_msr(hw.pmc(idx)), sel)
        st.eventsel_hw[idx] = sel
        self.stats.selector_writes += 1
        if charge:
            self._charge(vcpu, 0, 1)
        return 1

    def reprogram_fixed_ctrl(self, vcpu: Any, charge: bool = True) -> int:
        st: VcpuState = vcpu.mode_state
        if st.loaded_cpu is None or st.fixed_ctrl_msr is None:
            return 0
        value = fixed_ctrl_hw(vcpu, st.fixed_ctrl_msr)
        if value == st.fixed_ctrl_hw:
            return 0
        hw = vcpu.host.cpus[st.loaded_cpu].pmu
        hw.wrmsr(hw.fixed_ctrl_msr(), value)
        st.fixed_ctrl_hw = value
        if charge:
            self._charge(vcpu, 0, 1)
        return 1

    # ---- leak checks (engine instrumentation, not charged) -------------------------------------
    def _check_load(self, vcpu: Any) -> None:
        """After load: every counter the guest reads without an exit holds the guest's value;
        every host counter the guest does not have stays intercepted (no host value readable)."""
        st: VcpuState = vcpu.mode_state
        hw = vcpu.cpu.pmu
        bad: list[str] = []
        for idx, g, h, _, _ in self._pairs(vcpu, hw):
            if h.value != g.value:
                bad.append(f"pmc{idx} not the guest's value")
        bad += self._exposure_leaks(st, hw)  # extends this check's own list, not the cached one
        # the ledger keeps `where` and `what` of a failed check only
        where = f"{vcpu.name} load on cpu{vcpu.cpu.index}" if bad else ""
        self.host.leaks.check(not bad, where, "; ".join(bad), vcpu.now_ns())

    def _exposure_leaks(self, st: VcpuState, hw: Any) -> list[str]:
        """The load check's static part: host counters the guest does not have must stay
        intercepted. It depends only on the vCPU's intercepts and the CPU's PMU layout."""
        key = id(st), id(hw)
        c = self._exposure_cache.get(key)
        if c is not None and c[0] is st and c[1] is hw and c[2] is st.passthrough:
            return c[3]
        bad: list[str] = []
        exposed = set(st.gp_idx + st.fixed_idx)
        for h in hw.pmcs:
            if h.idx in exposed:
                continue
            for msr in hw.counter_msrs(h):
                if msr in st.passthrough:
                    bad.append(f"host pmc{h.idx} (MSR {msr:#x}) readable by the guest")
        if st.rdpmc_passthrough and len(exposed) != len(hw.pmcs):
            bad.append("RDPMC passed through with host counters the guest does not own")
        self._exposure_cache[key] = (st, hw, st.passthrough, bad)
        return bad

    def _check_put(self, vcpu: Any, cpu: Any) -> None:
        """After put: no guest value is left in the hardware counters, selectors, fixed
        control, status or global control the host is about to use."""
        st: VcpuState = vcpu.mode_state
        hw = cpu.pmu
        bad: list[str] = []
        for idx, _, h, _, sel_msr in self._pairs(vcpu, hw):
            if h.value:
                bad.append(f"pmc{idx} = {h.value:#x}")
            if sel_msr is not None and hw.rdmsr(sel_msr):
                bad.append(f"selector {sel_msr:#x} = {hw.rdmsr(sel_msr):#x}")
        fc = hw.fixed_ctrl_msr()
        if st.fixed_ctrl_msr is not None and fc is not None and hw.rdmsr(fc):
            bad.append("fixed control non-zero")
        if hw.global_status & vcpu.pmu.all_counter_mask:
            bad.append(f"global status {hw.global_status:#x}")
        if hw.rdmsr(self._hw_ctrl):
            bad.append("global control non-zero")
        if self.rules.atomic_global_ctrl and hw.entry_loads.get(self._hw_ctrl):
            bad.append("VM-entry GLOBAL_CTRL load still holds the guest value")
        where = f"{vcpu.name} put on cpu{cpu.index}" if bad else ""
        self.host.leaks.check(not bad, where, "; ".join(bad), cpu.now_ns())
