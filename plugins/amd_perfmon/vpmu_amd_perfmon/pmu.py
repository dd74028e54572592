"""The AMD core PMU register model: legacy K7 PerfMon, PerfCtrExtCore and PerfMonV2.

Physical (`guest=False`): AMD APM Vol. 2 §13.2 and the PPR, as summarized in
../shared/facts/x86-pmu-registers.md §5. Guest-visible (`guest=True`): KVM's
arch/x86/kvm/svm/pmu.c (`get_gp_pmc_amd`, `amd_pmu_set_msr`, `amd_pmu_refresh`) and the
common arch/x86/kvm/pmu.c (`kvm_pmu_set_msr`, `kvm_pmu_rdpmc`). Differences from hardware
are named where they occur:

- selector reserved bits: both drop them silently, but KVM's mask also drops HostOnly and
  GuestOnly (bits 40/41), so a guest never filters by host/guest mode;
- PerfCntrGlobalStatusClr/Set: hardware acts on any write; KVM ignores host-initiated writes
  (KVM_SET_MSRS) and only allows host-initiated writes of the read-only GlobalStatus;
- counting: the physical counter obeys HostOnly/GuestOnly with EFER.SVME; a guest-visible
  counter's `count_host`/`count_guest` are both its global enable (PmuBase convention).
"""

from __future__ import annotations

from typing import Any

from vpmu_core.api import ALWAYS_ON, Pmc, PmuBase, Register, fold_enables, get_logger, gp

from vpmu_amd_perfmon import eventsel as es

log = get_logger("vpmu.amd_perfmon")

WIDTH = 48  # APM §13.2.2: 48-bit counters; Linux cntval_mask = (1 << 48) - 1

# MSR map (Linux msr-index.h; facts §5.2)
K7_EVNTSEL0 = 0xC0010000
K7_PERFCTR0 = 0xC0010004
K7_NUM = 4
F15H_PERF_CTL0 = 0xC0010200  # CTLn = base + 2n, CTRn = base + 2n + 1
F15H_PERF_CTR0 = 0xC0010201
GLOBAL_STATUS = 0xC0000300
GLOBAL_CTL = 0xC0000301
GLOBAL_STATUS_CLR = 0xC0000302
GLOBAL_STATUS_SET = 0xC0000303
MSR_IA32_DEBUGCTL = 0x1D9
DEBUGCTL_LBR = 1 << 0
DEBUGCTL_BTF = 1 << 1


class AmdPmu(PmuBase):
    """One AMD core PMU: `n_counters` 48-bit counters, with or without the extension MSRs
    and PerfMonV2's global registers. See the module docstring for guest vs physical."""

    vendor = "amd"
    #: AMD has no VMCB field that switches PerfCntrGlobalCtl at VMRUN/#VMEXIT: software writes it.
    atomic_global_ctrl_switch = False

    def __init__(
        self,
        *,
        guest: bool,
        n_counters: int,
        ext_core: bool,
        perfmon_v2: bool,
        zen: bool,
        version: int | None = None,
        lbrv: bool = False,
    ) -> None:
        self._ready = False
        self._svme = False
        super().__init__(guest=guest)
        self.ext_core = ext_core
        self.perfmon_v2 = perfmon_v2
        self.zen = zen
        # KVM `amd_pmu_refresh`: version 2 with PerfMonV2, else 1; 0 = vPMU disabled.
        self.version = version if version is not None else (2 if perfmon_v2 else 1)
        self.gp = [Pmc(i, WIDTH) for i in range(n_counters)]
        self._sel = [0] * n_counters
        self._counter_bits = (1 << n_counters) - 1
        # PerfCntrGlobalCtl resets with every counter enabled, so v1 software still counts
        # (facts §5.4; KVM `kvm_pmu_refresh` emulates the same reset value).
        self._global_ctl = self._counter_bits if perfmon_v2 else 0
        #: PerfCntrGlobalStatus (PerfMonV2), the target of the CLR/SET registers
        self._status = Register("PerfCntrGlobalStatus", writable=self._counter_bits, read_only=True)
        #: PmuBase's raise_overflow/global_status/set_global_status keep it (PerfMonV2 only)
        self.status_register = self._status if perfmon_v2 else None
        self._sel_valid = es.GUEST_VALID if guest else es.HW_VALID
        #: SVM LBR virtualization (CPUID 8000_000AH EDX[1], KVM module parameter `lbrv`)
        self.lbrv = lbrv
        self._debugctl = 0
        if guest:
            # IA32_DEBUGCTL exists for every SVM guest, PMU or not (svm.c svm_get_msr/svm_set_msr)
            self._reg(MSR_IA32_DEBUGCTL, lambda: self._debugctl, self._write_debugctl)
        if self.version > 0:
            self._register_msrs()
        self._ready = True
        self.refresh(0)

    # ---- EFER.SVME: HostOnly/GuestOnly only filter while it is set -----------------------
    @property
    def virtualization_enabled(self) -> bool:
        return self._svme

    @virtualization_enabled.setter
    def virtualization_enabled(self, value: bool) -> None:
        """Toggling SVME changes what HO/GO counters count: rebuild the counting plans."""
        changed = bool(value) != self._svme
        self._svme = bool(value)
        if changed and self._ready:
            self.refresh(0)

    # ---- MSR map -------------------------------------------------------------------------
    def _register_msrs(self) -> None:
        n = len(self.gp)
        for i in range(n):
            # Full 48-bit counter writes, upper bits dropped (KVM `pmc_write_counter`: counter
            # &= mask; AMD has no 32-bit sign-extending legacy write, unlike Intel's PMCx).
            if self.ext_core:
                self._reg(F15H_PERF_CTL0 + 2 * i, self._sel_reader(i), self._sel_writer(i))
                self.add_counter(F15H_PERF_CTR0 + 2 * i, self.gp[i], "masked")
            if i < K7_NUM:
                # K7 MSRs: the only interface without PerfCtrExtCore, an alias of counters
                # 0-3 with it (facts §5.2). KVM `get_gp_pmc_amd` maps them the same way.
                self._reg(K7_EVNTSEL0 + i, self._sel_reader(i), self._sel_writer(i))
                self.add_counter(K7_PERFCTR0 + i, self.gp[i], "masked")
        # Counters past n have no MSR: PmuBase raises #GP (KVM: `amd_pmc_idx_to_pmc` NULL).
        if self.guest:
            # kvm_pmu_is_valid_msr() -> amd_is_valid_msr(): "case MSR_K7_EVNTSEL0 ...
            # MSR_K7_PERFCTR3: return pmu->version > 0", so KVM's common code does not answer
            # them with 0 (kvm_get_msr_common); amd_pmu_get_msr/set_msr find no pmc for a
            # counter past nr_arch_gp_counters and return 1: #GP, both directions.
            for i in range(n, K7_NUM):
                for msr in (K7_EVNTSEL0 + i, K7_PERFCTR0 + i):
                    self._reg(msr, _k7_absent(msr), _k7_absent(msr))
        if self.perfmon_v2:
            self._reg(GLOBAL_STATUS, lambda: self._status.value, self._write_status)
            self._reg(GLOBAL_CTL, lambda: self._global_ctl, self._write_global_ctl)
            # STATUS_CLR/SET read as 0 (KVM `kvm_pmu_get_msr`; facts §5.2), write-1-to-clear /
            # -set, reserved bits ignored (facts §5.4). Hardware acts on any write; KVM only on
            # guest writes ("if (!msr_info->host_initiated)").
            bits = self._counter_bits
            for msr, name, w1c, w1s in (
                (GLOBAL_STATUS_CLR, "PerfCntrGlobalStatusClr", self._status, None),
                (GLOBAL_STATUS_SET, "PerfCntrGlobalStatusSet", None, self._status),
            ):
                reg = Register(
                    name,
                    writable=bits,
                    reserved="drop",
                    reads_as=0,
                    write_1_to_clear=w1c,
                    write_1_to_set=w1s,
                    host_ignored=self.guest,
                )
                self.add_register(msr, reg)

    def _sel_reader(self, i: int) -> Any:
        return lambda: self._sel[i]

    def _sel_writer(self, i: int) -> Any:
        def write(value: int) -> None:
            # Reserved bits are dropped, never #GP: APM (hardware) and KVM svm/pmu.c
            # `amd_pmu_set_msr` ("data &= ~pmu->reserved_bits") agree on that much.
            value &= self._sel_valid
            if value != self._sel[i]:
                self._sel[i] = value
                self.refresh(1 << i)

        return write

    def _write_debugctl(self, value: int) -> None:
        """svm.c `svm_set_msr()` MSR_IA32_DEBUGCTLMSR: without `lbrv` every write is dropped
        (kvm_pr_unimpl_wrmsr) and `svm_get_msr()` reads 0 ("lbrv ? dbgctl : 0"); with it BTF
        is suppressed ("KVM doesn't virtualize BTF"), any bit in DEBUGCTL_RESERVED_BITS
        (~DEBUGCTLMSR_LBR) #GPs, and LBR is stored. Not modelled: the LBR records that
        DEBUGCTL.LBR turns on (no AMD LBR facility), BUS_LOCK_DETECT (Zen 5 hosts)."""
        if not self.lbrv:
            return
        value &= ~DEBUGCTL_BTF
        if value & ~DEBUGCTL_LBR:
            raise gp(f"DEBUGCTL {value:#x}: reserved bits {value & ~DEBUGCTL_LBR:#x}")
        self._debugctl = value

    def _write_global_ctl(self, value: int) -> None:
        # Reserved bits masked, not #GP (KVM: "data &= ~pmu->global_ctrl_rsvd" for AMD).
        value &= self._counter_bits
        diff = value ^ self._global_ctl
        if diff:
            self._global_ctl = value
            self.refresh(diff)

    def _write_status(self, value: int) -> None:
        # Read-only; writes ignored (PPR, KVM "Per PPR, Read-only MSR. Writes are ignored").
        # Host-initiated (KVM_SET_MSRS / context switch) writes set it; KVM #GPs reserved bits.
        if not self.host_initiated:
            return
        if value & ~self._counter_bits:
            raise gp(f"GLOBAL_STATUS reserved bits {value & ~self._counter_bits:#x}")
        self._status.value = value

    # ---- decoding --------------------------------------------------------------------------
    def _decode(self) -> None:
        svme = self._svme
        # PerfMonV2: counts only if PERF_CTLn.En AND PerfCntrGlobalCtl[n] (facts §5.4); AMD
        # switches no control at VMRUN, so host and guest mode count under the same one.
        ctl = self._global_ctl if self.perfmon_v2 else ALWAYS_ON
        for i, pmc in enumerate(self.gp):
            sel = self._sel[i]
            pmc.config = sel
            pmc.event = es.decode_kind(sel, self.zen)
            pmc.usr = bool(sel & es.USR)
            pmc.os = bool(sel & es.OS)
            pmc.int_en = bool(sel & es.INT)
            pmc.local_en = bool(sel & es.EN)
            pmc.exotic = es.is_exotic(sel)
            # a guest-visible counter has no mode filter (KVM drops HO/GO from its selectors)
            host, guest = (True, True) if self.guest else _host_guest_filter(sel, svme)
            fold_enables(pmc, ctl, ctl, host_ok=host, guest_ok=guest)

    # ---- roles -------------------------------------------------------------------------------
    def eventsel_msr(self, pmc: Pmc) -> int | None:
        return F15H_PERF_CTL0 + 2 * pmc.idx if self.ext_core else K7_EVNTSEL0 + pmc.idx

    def eventsel_msrs(self, pmc: Pmc) -> tuple[int, ...]:
        """Extension PERF_CTLn first, the K7 EVNTSELn alias second where counter < 4 (facts
        §5.2; KVM `get_gp_pmc_amd` maps MSR_K7_EVNTSEL0..3 to the same pmc)."""
        if not self.ext_core:
            return (K7_EVNTSEL0 + pmc.idx,)
        if pmc.idx < K7_NUM:
            return (F15H_PERF_CTL0 + 2 * pmc.idx, K7_EVNTSEL0 + pmc.idx)
        return (F15H_PERF_CTL0 + 2 * pmc.idx,)

    def counter_msrs(self, pmc: Pmc) -> tuple[int, ...]:
        """Extension MSR first, the K7 alias second where counter < 4."""
        if not self.ext_core:
            return (K7_PERFCTR0 + pmc.idx,)
        if pmc.idx < K7_NUM:
            return (F15H_PERF_CTR0 + 2 * pmc.idx, K7_PERFCTR0 + pmc.idx)
        return (F15H_PERF_CTR0 + 2 * pmc.idx,)

    def control_msrs(self) -> tuple[int, ...]:
        """Every PERF_CTL MSR that exists, aliases included (a mediated vPMU intercepts all)."""
        return tuple(m for p in self.gp for m in self.eventsel_msrs(p))

    def global_msrs(self) -> dict[str, int]:
        if not self.perfmon_v2:
            return {}
        return {
            "ctrl": GLOBAL_CTL,
            "status": GLOBAL_STATUS,
            "status_clr": GLOBAL_STATUS_CLR,
            "status_set": GLOBAL_STATUS_SET,
        }

    def rdpmc_ecx(self, pmc: Pmc) -> int:
        return pmc.idx  # RDPMC ECX 0..5 = core counters (APM Vol. 3 RDPMC)

    def rdpmc(self, ecx: int) -> int:
        """ECX must name an existing core counter, else #GP: hardware, and KVM
        `amd_rdpmc_ecx_to_pmc` (no flag bits on AMD). The value is masked to 48 bits."""
        if not 0 <= ecx < len(self.gp):
            raise gp(f"rdpmc ecx={ecx:#x}: only {len(self.gp)} counters")
        return self.read_counter(self.gp[ecx]) & ((1 << WIDTH) - 1)

    def hw_eventsel(self, value: int) -> int:
        """Mediated vPMU: the hardware selector counts only in guest mode (KVM mediated vPMU
        v6 26/44: eventsel_hw = data & ~HostOnly | GuestOnly), since AMD cannot switch
        GlobalCtl atomically at VMRUN/#VMEXIT."""
        return (value & ~es.HOST_ONLY) | es.GUEST_ONLY

    @property
    def global_ctl(self) -> int:
        return self._global_ctl

    def state_msrs(self) -> list[int]:
        """Architectural state without the aliases and the write-only CLR/SET views."""
        out: list[int] = []
        if self.perfmon_v2:
            out += [GLOBAL_STATUS, GLOBAL_CTL]
        for p in self.gp:
            out.append(self.eventsel_msr(p) or 0)
            out.append(self.counter_msrs(p)[0])
        if self.guest:
            out.append(MSR_IA32_DEBUGCTL)  # vCPU state KVM_GET/SET_MSRS carry (svm_get_msr)
        return out

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(ext_core=self.ext_core, perfmon_v2=self.perfmon_v2, guest=self.guest)
        return d


def _k7_absent(msr: int) -> Any:
    def fault(*_: int) -> int:
        raise gp(f"MSR {msr:#x}: K7 counter past the guest's count (amd_pmu_get_msr: no pmc)")

    return fault


def _host_guest_filter(sel: int, svme: bool) -> tuple[bool, bool]:
    """(counts host-mode work, counts guest-mode work) of a physical counter.

    APM Vol. 2 §13.2.1 and Linux amd/core.c `amd_core_hw_config` comments, as the KVM
    selftest `svm_pmu_host_guest_test` checks: HO == GO (both clear or both set) counts in
    both modes; with EFER.SVME set HO counts only host, GO only guest; with SVME clear there
    is no guest mode, HO counts everything and a GuestOnly counter counts nothing.
    """
    ho = bool(sel & es.HOST_ONLY)
    go = bool(sel & es.GUEST_ONLY)
    if ho == go:
        return True, True
    if not svme:
        return ho, ho
    return ho, go
