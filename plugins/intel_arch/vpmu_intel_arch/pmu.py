"""Intel architectural PMU v1-v5 register model: the physical PMU and KVM's guest view.

Hardware rules cite the SDM (Vol. 3B ch. 20 "Performance Monitoring"); where KVM's
guest-visible behaviour differs (`guest=True`) the rule cites arch/x86/kvm/vmx/pmu_intel.c
(`intel_pmu_set_msr`/`intel_pmu_get_msr`/`intel_pmu_refresh`) or arch/x86/kvm/pmu.c.

Span-model limits (documented, not hidden): EDGE, INV and CMASK count occurrences of a
per-cycle condition (e.g. CMASK=2 on instructions = cycles retiring >= 2). A span only
knows totals, not the per-cycle distribution, so such a counter is marked `exotic` and
counts nothing rather than a made-up number. The same holds for AnyThread on the physical
PMU (it would count the sibling thread, which a per-CPU span does not describe).
"""

from __future__ import annotations

from vpmu_core.api import (
    ALWAYS_ON,
    FIXED_BASE,
    EventKind,
    Overflow,
    Pmc,
    PmuBase,
    Register,
    entry_split,
    fold_enables,
    gp,
)
from vpmu_intel_arch.events import (
    ARCH_EVENT_MASK,
    EVTSEL_ANY,
    EVTSEL_CMASK,
    EVTSEL_EDGE,
    EVTSEL_EN,
    EVTSEL_INT,
    EVTSEL_INV,
    EVTSEL_OS,
    EVTSEL_USR,
    FIXED_EVENTS,
)
from vpmu_intel_arch.layout import PmuLayout

# MSR indexes (SDM Vol. 4 Table 2-2; Linux msr-index.h).
MSR_PMC0 = 0xC1
MSR_PERFEVTSEL0 = 0x186
MSR_A_PMC0 = 0x4C1
MSR_FIXED_CTR0 = 0x309
MSR_PERF_METRICS = 0x329
MSR_PERF_CAPABILITIES = 0x345
MSR_FIXED_CTR_CTRL = 0x38D
MSR_GLOBAL_STATUS = 0x38E
MSR_GLOBAL_CTRL = 0x38F
MSR_GLOBAL_OVF_CTRL = 0x390
MSR_GLOBAL_STATUS_SET = 0x391
MSR_GLOBAL_INUSE = 0x392
MSR_IA32_DEBUGCTL = 0x1D9

# IA32_DEBUGCTL bits KVM drops rather than #GPs when the guest cannot have them (SDM Vol. 3B
# 17.4.1; vmx.c vmx_is_valid_debugctl(): "invalid & (DEBUGCTLMSR_BTF | DEBUGCTLMSR_LBR)").
DEBUGCTL_LBR = 1 << 0
DEBUGCTL_BTF = 1 << 1

# RDPMC ECX encodings (SDM Vol. 2B RDPMC; KVM INTEL_RDPMC_*): bits 31:16 type, 15:0 index.
RDPMC_FIXED = 1 << 30
RDPMC_METRICS = 1 << 29
RDPMC_TYPE_MASK = 0xFFFF << 16
RDPMC_INDEX_MASK = 0xFFFF

# GLOBAL_STATUS bits beyond the counters (SDM Vol. 3B 20.2.4 Figure 20-13; K-pe).
STATUS_PERF_METRICS = 1 << 48
STATUS_V4_FREEZE = 0xF << 58  # LBR_FRZ, CTR_FRZ, ASCI, Ovf_Uncore (v4, SDM 20.2.4)
STATUS_OVFBUF_CONDCHGD = 0x3 << 62  # OvfBuf, CondChgd
INUSE_PMI = 1 << 63  # IA32_PERF_GLOBAL_INUSE bit 63 PMI_InUse

_NIBBLE_OS, _NIBBLE_USR, _NIBBLE_ANY, _NIBBLE_PMI = 1, 2, 4, 8
#: METRIC byte order in IA32_PERF_METRICS (SDM Vol. 3B 21.3.9.3; Linux INTEL_TD_METRIC_*).
_METRIC_KINDS = (
    EventKind.TOPDOWN_RETIRING,
    EventKind.TOPDOWN_BAD_SPEC,
    EventKind.TOPDOWN_FE_BOUND,
    EventKind.TOPDOWN_BE_BOUND,
)


class IntelPmu(PmuBase):
    """One Intel PMU. See the module docstring for the span-model limits."""

    vendor = "intel"
    #: VM-entry/exit load/save IA32_PERF_GLOBAL_CTRL atomically (VMCS controls "load
    #: IA32_PERF_GLOBAL_CTRL", SDM Vol. 3C 25.7.1 / 25.8.1).
    atomic_global_ctrl_switch = True

    def __init__(self, layout: PmuLayout) -> None:
        super().__init__(guest=layout.guest)
        self.layout = layout
        self.version = layout.version
        self.gp = [Pmc(i, layout.gp_width) for i in range(layout.n_gp)]
        self.fixed = [Pmc(FIXED_BASE + i, layout.fixed_width) for i in range(layout.n_fixed)]
        self._evtsel = [0] * layout.n_gp
        #: the selector value each GP counter was last decoded from: `_decode` runs after every
        #: control write (a hot path in mediated switches) and skips unchanged selectors
        self._decoded_sel: list[int | None] = [None] * layout.n_gp
        #: the FIXED_CTR_CTRL value and the (host-mode, guest-mode) global controls the
        #: counters were last decoded from (None: never): `_decode` refolds a counter only
        #: where its selector, its nibble or its bit of either control changed since. The
        #: decoded fields are written nowhere else, so these are what invalidates them.
        self._decoded_fixed: int | None = None
        self._decoded_ctrl: tuple[int, int] | None = None
        #: the GP counters' bits (`Pmc.idx` 0..n_gp-1)
        self._gp_bits = (1 << layout.n_gp) - 1
        self._fixed_ctrl = 0
        # SDM Vol. 3B 20.2.2: "at RESET all GP enable bits of IA32_PERF_GLOBAL_CTRL are set"
        # (KVM intel_pmu_refresh does the same, fixed bits clear).
        self._global_ctrl = layout.gp_mask if layout.version >= 2 else 0
        self._debugctl = 0
        self._perf_caps = layout.perf_caps
        # perf metrics: topdown counts accrued while SLOTS (fixed3) counts, see `accrue`.
        self._td = [0, 0, 0, 0, 0]  # slots, retiring, bad_spec, fe_bound, be_bound
        self._td_written = 0
        self._td_host = False
        self._td_guest = False
        self._evtsel_rsvd = self._evtsel_reserved()
        self._fixed_ctrl_rsvd = self._fixed_ctrl_reserved()
        self._global_ctrl_rsvd = ~(layout.counter_mask | (STATUS_PERF_METRICS if layout.perf_metrics else 0))
        self._global_status_rsvd = self._global_ctrl_rsvd & ~STATUS_OVFBUF_CONDCHGD
        if layout.version >= 4:
            self._global_status_rsvd &= ~STATUS_V4_FREEZE
        #: IA32_PERF_GLOBAL_STATUS (v2+: SDM 20.2.2); PmuBase's raise_overflow/global_status/
        #: set_global_status keep it (v1 has none)
        self._status = Register("IA32_PERF_GLOBAL_STATUS", writable=~self._global_status_rsvd & (1 << 64) - 1)
        self.status_register = self._status if layout.version >= 2 else None
        self._register_msrs()
        self.refresh()

    # ---- reserved-bit masks ----------------------------------------------------------
    def _evtsel_reserved(self) -> int:
        """Reserved PERFEVTSELx bits. KVM: `pmu->reserved_bits = 0xffffffff00200000` (bits
        63:32 and ANY; IN_TX/IN_TXCP only with HLE/RTM, not exposed here). Hardware: bits
        63:32 reserved without TSX/PEBS extensions (not modelled); ANY valid on v3+ unless
        CPUID.0AH:EDX[15] deprecates it (SDM Vol. 3B 20.2.3, 20.2.5)."""
        rsvd = 0xFFFFFFFF00000000
        if not self.layout.anythread:
            rsvd |= EVTSEL_ANY
        return rsvd

    def _fixed_ctrl_reserved(self) -> int:
        """Reserved FIXED_CTR_CTRL bits: nibbles of absent counters (SDM Vol. 3B 20.2.2);
        KVM allows only 0xB per nibble (`fixed_ctr_ctrl_rsvd`, AnyThread rejected)."""
        per = 0xF if self.layout.anythread else 0xB
        valid = 0
        for i in range(self.layout.n_fixed):
            valid |= per << (4 * i)
        return ~valid & 0xFFFFFFFFFFFFFFFF

    # ---- MSR map -------------------------------------------------------------------------
    def _register_msrs(self) -> None:
        lay = self.layout
        if lay.guest and not (lay.lbr or lay.arch_lbr):
            # IA32_DEBUGCTL is vCPU state KVM always handles (vmx_set_msr/vmx_get_msr), PMU or
            # not; with a guest LBR the LBR facility owns it (its own rule, debugctl.py).
            self._reg(MSR_IA32_DEBUGCTL, lambda: self._debugctl, self._write_debugctl)
        if lay.version == 0:
            return  # no architectural PMU: every PMU MSR #GPs (KVM: pmu->version == 0)
        for i, pmc in enumerate(self.gp):
            self._reg(MSR_PERFEVTSEL0 + i, lambda i=i: self._evtsel[i], lambda v, i=i: self._write_evtsel(i, v))
            # IA32_PMCx: bits 31:0 sign-extended to the width (SDM Vol. 3B 20.2.6; KVM
            # `data = (s64)(s32)data` unless host_initiated, which writes the value whole).
            self.add_counter(MSR_PMC0 + i, pmc, "legacy")
            if lay.full_width:
                # IA32_A_PMCx exist only with PERF_CAPABILITIES[13] (SDM Vol. 3B 20.2.6;
                # KVM get_fw_gp_pmc requires fw_writes_is_enabled); full width, bits above
                # the width #GP (KVM intel_pmu_set_msr).
                self.add_counter(MSR_A_PMC0 + i, pmc, "checked")
        if lay.pdcm:
            # PERF_CAPABILITIES needs CPUID.1:ECX.PDCM (SDM Vol. 4 Table 2-2; KVM vmx_get_msr).
            self._reg(MSR_PERF_CAPABILITIES, lambda: self._perf_caps, self._write_perf_caps)
        if lay.version < 2:
            return  # v1: no fixed counters and no global registers (SDM Vol. 3B 20.2.1)
        for i, pmc in enumerate(self.fixed):
            # KVM writes fixed counters whole (no sign extension), masked to the width.
            self.add_counter(MSR_FIXED_CTR0 + i, pmc, "masked")
        self._reg(MSR_FIXED_CTR_CTRL, lambda: self._fixed_ctrl, self._write_fixed_ctrl)
        self._reg(MSR_GLOBAL_CTRL, lambda: self._global_ctrl, self._write_global_ctrl)
        self._reg(MSR_GLOBAL_STATUS, lambda: self._status.value, self._write_global_status)
        # OVF_CTRL reads 0 in KVM (kvm_pmu_get_msr); write-1-to-clear (SDM 20.2.2).
        self._reg(MSR_GLOBAL_OVF_CTRL, lambda: 0, self._write_ovf_ctrl)
        if lay.version >= 4:
            # v4 STATUS_SET (write-1-to-set, reads 0) and INUSE (read-only), SDM 20.2.4.
            self._reg(MSR_GLOBAL_STATUS_SET, lambda: 0, self._write_status_set)
            self.add_register(MSR_GLOBAL_INUSE, Register("GLOBAL_INUSE", compute=self._inuse))
        if lay.perf_metrics and len(self.fixed) > 3:
            # IA32_PERF_METRICS with PERF_CAPABILITIES[15] (SDM Vol. 3B 21.3.9.3).
            self._reg(MSR_PERF_METRICS, self._read_perf_metrics, self._write_perf_metrics)

    # ---- writes ----------------------------------------------------------------------------
    def _write_evtsel(self, i: int, value: int) -> None:
        if value & self._evtsel_rsvd:
            raise gp(f"PERFEVTSEL{i} {value:#x}: reserved bits {value & self._evtsel_rsvd:#x}")
        if value != self._evtsel[i]:
            self._evtsel[i] = value
            self.refresh(1 << i)

    def _write_fixed_ctrl(self, value: int) -> None:
        if value & self._fixed_ctrl_rsvd:
            raise gp(f"FIXED_CTR_CTRL {value:#x}: reserved bits {value & self._fixed_ctrl_rsvd:#x}")
        changed = value ^ self._fixed_ctrl
        if changed:
            self._fixed_ctrl = value
            mask = 0
            bit = 1 << FIXED_BASE
            while changed:  # the reserved-bit check leaves only the counters' nibbles
                if changed & 0xF:
                    mask |= bit
                changed >>= 4
                bit <<= 1
            self.refresh(mask)  # KVM reprogram_fixed_counters: only changed nibbles

    def _write_global_ctrl(self, value: int) -> None:
        if value & self._global_ctrl_rsvd:
            raise gp(f"GLOBAL_CTRL {value:#x}: reserved bits")  # KVM kvm_valid_perf_global_ctrl
        changed = value ^ self._global_ctrl
        if changed:
            self._global_ctrl = value
            self.refresh(changed & self.all_counter_mask)  # KVM reprogram_counters(old ^ new)

    def _write_global_status(self, value: int) -> None:
        """GLOBAL_STATUS is read-only (SDM 20.2.2); KVM lets only userspace (host_initiated)
        write it, for migration (kvm_pmu_set_msr)."""
        if not self.host_initiated:
            raise gp("GLOBAL_STATUS is read-only")
        if value & self._global_status_rsvd:
            raise gp(f"GLOBAL_STATUS {value:#x}: reserved bits")
        self._status.value = value

    def _write_ovf_ctrl(self, value: int) -> None:
        # STATUS_RESET shares GLOBAL_STATUS's reserved bits (KVM pmu.c comment).
        if value & self._global_status_rsvd:
            raise gp(f"GLOBAL_OVF_CTRL {value:#x}: reserved bits")
        self._status.value &= ~value

    def _write_status_set(self, value: int) -> None:
        if value & self._global_status_rsvd:
            raise gp(f"GLOBAL_STATUS_SET {value:#x}: reserved bits")
        self._status.value |= value

    def _write_debugctl(self, value: int) -> None:
        """IA32_DEBUGCTL of a guest without LBR (vmx.c `vmx_get_supported_debugctl()`: LBR and
        FREEZE_LBRS_ON_PMI only with `intel_pmu_lbr_is_enabled()`, BUS_LOCK_DETECT / RTM_DEBUG
        only with those guest CPUID features, which these models do not advertise: so nothing
        is supported). `vmx_is_valid_debugctl()` drops LBR and BTF silently
        (kvm_pr_unimpl_wrmsr) and #GPs any other bit; `data &= supported` stores 0, so the
        register reads 0. Host-initiated writes take the same rule here (KVM would also
        accept LBR/FREEZE_LBRS_ON_PMI from userspace when the host has LBR; not modelled)."""
        invalid = value & ~(DEBUGCTL_LBR | DEBUGCTL_BTF)
        if invalid:
            raise gp(f"DEBUGCTL {value:#x}: unsupported bits {invalid:#x}")
        self._debugctl = 0

    def _write_perf_caps(self, value: int) -> None:
        """Read-only to the guest and on hardware (SDM Vol. 4; KVM: only userspace may set
        it). A host-initiated write may restore the current value (migration); changing the
        capabilities after creation is not modelled (it would change the MSR map)."""
        if not self.host_initiated or value != self._perf_caps:
            raise gp("PERF_CAPABILITIES is read-only")

    def _inuse(self) -> int:
        """INUSE (KVM "Add MSR_CORE_PERF_GLOBAL_INUSE emulation"): bit n = EVTSELn[7:0] != 0,
        bit 32+i = FIXED_CTR_CTRL OS/USR bits of i != 0, bit 63 = any PMI enable."""
        v = 0
        pmi = False
        for i, sel in enumerate(self._evtsel):
            if sel & 0xFF:
                v |= 1 << i
            pmi |= bool(sel & EVTSEL_INT)
        for i in range(len(self.fixed)):
            nib = self._fixed_ctrl >> (4 * i)
            if nib & (_NIBBLE_OS | _NIBBLE_USR):
                v |= 1 << (FIXED_BASE + i)
            pmi |= bool(nib & _NIBBLE_PMI)
        return v | (INUSE_PMI if pmi else 0)

    # ---- perf metrics ------------------------------------------------------------------------
    def _read_perf_metrics(self) -> int:
        """Four 8-bit fractions of 0xFF of SLOTS: retiring, bad spec, FE bound, BE bound
        (SDM Vol. 3B 21.3.9.3). Approximation: hardware updates the fractions continuously;
        we compute them at read time from the topdown counts of the spans SLOTS counted since
        the last PERF_METRICS write, each byte floor(part * 0xFF / slots) (so the four sum to
        at most 0xFF when the parts sum to slots, as in `Work`)."""
        slots = self._td[0]
        if not slots:
            return self._td_written
        v = 0
        for k in range(4):
            v |= min(0xFF, self._td[k + 1] * 0xFF // slots) << (8 * k)
        return v

    def _write_perf_metrics(self, value: int) -> None:
        """Linux writes 0 here together with FIXED_CTR3 to restart the metrics; a write
        restarts the accumulation, and the written value reads back until SLOTS counts."""
        self._td = [0, 0, 0, 0, 0]
        self._td_written = value

    # ---- decoding ----------------------------------------------------------------------------
    def _decode(self) -> None:
        lay = self.layout
        # SDM 20.2.2: v2+ counts only with both the local enable and GLOBAL_CTRL[n]; v1 has
        # no global control. Physical PMU: guest-mode work counts under the GLOBAL_CTRL
        # VM-entry loads (VMCS "load IA32_PERF_GLOBAL_CTRL", SDM Vol. 3C 25.8.1).
        if lay.version >= 2:
            host_ctrl, entry_ctrl = entry_split(self, MSR_GLOBAL_CTRL, self._global_ctrl)
        else:
            host_ctrl = entry_ctrl = ALWAYS_ON
        # only what changed since the last decode: every counter the first time
        last = self._decoded_ctrl
        refold = -1 if last is None else (last[0] ^ host_ctrl) | (last[1] ^ entry_ctrl)
        self._decoded_ctrl = host_ctrl, entry_ctrl
        decoded = self._decoded_sel
        evtsel = self._evtsel
        gp_refold = refold & self._gp_bits
        if evtsel != decoded or gp_refold:  # a list compare: most decodes change few counters
            self._decode_gp(evtsel, decoded, gp_refold, host_ctrl, entry_ctrl)
        fixed_ctrl = self._fixed_ctrl
        last_fixed = self._decoded_fixed
        nibbles = -1 if last_fixed is None else last_fixed ^ fixed_ctrl
        if nibbles or refold >> FIXED_BASE:
            self._decoded_fixed = fixed_ctrl
            self._decode_fixed(fixed_ctrl, nibbles, refold, host_ctrl, entry_ctrl)
        if self.layout.perf_metrics and len(self.fixed) > 3:
            slots = self.fixed[3]
            on = slots.local_en and not slots.exotic
            self._td_host = on and bool(host_ctrl & STATUS_PERF_METRICS) and slots.count_host
            self._td_guest = on and bool(entry_ctrl & STATUS_PERF_METRICS) and slots.count_guest

    def _decode_gp(
        self, evtsel: list[int], decoded: list[int | None], refold: int, host_ctrl: int, entry_ctrl: int
    ) -> None:
        """The GP counters of `_decode`: the selector fields where the selector changed, the
        enables where the counter's bit of either global control did (`refold`)."""
        counted = self.layout.counted
        for i, pmc in enumerate(self.gp):
            sel = evtsel[i]
            if decoded[i] != sel:  # selector fields only when the selector changed
                decoded[i] = sel
                pmc.config = sel
                pmc.event = counted.get(sel & ARCH_EVENT_MASK)
                pmc.usr = bool(sel & EVTSEL_USR)
                pmc.os = bool(sel & EVTSEL_OS)
                pmc.int_en = bool(sel & EVTSEL_INT)
                pmc.local_en = bool(sel & EVTSEL_EN)
                # EDGE/INV/CMASK (and AnyThread) cannot be counted exactly from spans.
                pmc.exotic = bool(sel & (EVTSEL_EDGE | EVTSEL_INV | EVTSEL_CMASK | EVTSEL_ANY))
            if refold >> i & 1:
                fold_enables(pmc, host_ctrl, entry_ctrl)

    def _decode_fixed(self, fixed_ctrl: int, nibbles: int, refold: int, host_ctrl: int, entry_ctrl: int) -> None:
        """The fixed counters of `_decode`: a counter's fields where its FIXED_CTR_CTRL nibble
        changed (`nibbles`), its enables where its bit of either global control did."""
        for i, pmc in enumerate(self.fixed):
            if nibbles >> (4 * i) & 0xF:
                nib = fixed_ctrl >> (4 * i) & 0xF
                code, kind = FIXED_EVENTS[i]
                pmc.config = code
                pmc.event = kind
                pmc.os = bool(nib & _NIBBLE_OS)
                pmc.usr = bool(nib & _NIBBLE_USR)
                pmc.int_en = bool(nib & _NIBBLE_PMI)
                # SDM 20.2.2: a fixed counter is enabled by its OS/USR bits (no EN bit).
                pmc.local_en = pmc.os or pmc.usr
                pmc.exotic = bool(nib & _NIBBLE_ANY)
            if refold >> pmc.idx & 1:
                fold_enables(pmc, host_ctrl, entry_ctrl)

    def accrue(self, counts: tuple[int, ...], cpl: int, guest: bool) -> list[Overflow] | None:
        """Base accrual plus the perf-metrics breakdown while SLOTS and GLOBAL_CTRL[48] count
        (the breakdown follows the current controls, also inside `accrue_plan`)."""
        ov = super().accrue(counts, cpl, guest)
        if (self._td_guest if guest else self._td_host) and self.fixed[3].counts_cpl(cpl):
            td = self._td
            td[0] += counts[EventKind.TOPDOWN_SLOTS]
            for k, kind in enumerate(_METRIC_KINDS):
                td[k + 1] += counts[kind]
        return ov

    # ---- RDPMC -------------------------------------------------------------------------------
    def rdpmc(self, ecx: int) -> int:
        """SDM Vol. 2B RDPMC; KVM `intel_rdpmc_ecx_to_pmc`: type in ECX[31:16] is 0 (GP) or
        bit 30 (fixed); anything else - bit 31 "fast read" included - #GP, as is an index
        past the enumerated counters. Bit 29 reads PERF_METRICS on hardware with it (KVM
        does not expose perf metrics). The value is masked to the counter width."""
        ecx &= 0xFFFFFFFF
        kind = ecx & RDPMC_TYPE_MASK
        idx = ecx & RDPMC_INDEX_MASK
        if self.layout.version == 0:
            raise gp("rdpmc: no architectural PMU")
        if kind == 0:
            pmc = self.gp[idx] if idx < len(self.gp) else None
        elif kind == RDPMC_FIXED and self.layout.version >= 2:
            pmc = self.fixed[idx] if idx < len(self.fixed) else None
        elif kind == RDPMC_METRICS and idx == 0 and self.has_msr(MSR_PERF_METRICS):
            return self._read_perf_metrics()
        else:
            pmc = None
        if pmc is None:
            raise gp(f"rdpmc {ecx:#x}: no such counter")
        return self.read_counter(pmc)

    # ---- roles -------------------------------------------------------------------------------
    def eventsel_msr(self, pmc: Pmc) -> int | None:
        return None if pmc.is_fixed else MSR_PERFEVTSEL0 + pmc.idx

    def eventsel_msrs(self, pmc: Pmc) -> tuple[int, ...]:
        """IA32_PERFEVTSELx has no alias (SDM Vol. 4 Table 2-2)."""
        return () if pmc.is_fixed else (MSR_PERFEVTSEL0 + pmc.idx,)

    def counter_msrs(self, pmc: Pmc) -> tuple[int, ...]:
        if pmc.is_fixed:
            return (MSR_FIXED_CTR0 + pmc.idx - FIXED_BASE,)
        if self.layout.full_width:
            return (MSR_A_PMC0 + pmc.idx, MSR_PMC0 + pmc.idx)
        return (MSR_PMC0 + pmc.idx,)

    def control_msrs(self) -> tuple[int, ...]:
        sels = tuple(MSR_PERFEVTSEL0 + i for i in range(len(self.gp)))
        return sels + ((MSR_FIXED_CTR_CTRL,) if self.layout.version >= 2 else ())

    def global_msrs(self) -> dict[str, int]:
        if self.layout.version < 2:
            return {}
        out = {"ctrl": MSR_GLOBAL_CTRL, "status": MSR_GLOBAL_STATUS, "status_clr": MSR_GLOBAL_OVF_CTRL}
        if self.layout.version >= 4:
            out["status_set"] = MSR_GLOBAL_STATUS_SET
            out["inuse"] = MSR_GLOBAL_INUSE
        return out

    def fixed_ctrl_msr(self) -> int | None:
        return MSR_FIXED_CTR_CTRL if self.layout.version >= 2 else None

    def rdpmc_ecx(self, pmc: Pmc) -> int:
        return RDPMC_FIXED | (pmc.idx - FIXED_BASE) if pmc.is_fixed else pmc.idx

    @property
    def global_ctrl(self) -> int:
        """The host-visible GLOBAL_CTRL value (tests and modes)."""
        return self._global_ctrl

    def state_msrs(self) -> list[int]:
        # write-only / derived registers are not state (STATUS_SET, OVF_CTRL, INUSE).
        skip = {MSR_GLOBAL_OVF_CTRL, MSR_GLOBAL_STATUS_SET, MSR_GLOBAL_INUSE, MSR_IA32_DEBUGCTL}
        return [m for m in self.msr_indexes if m not in skip]

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d.update(full_width_writes=self.layout.full_width, perf_caps=self._perf_caps, guest=self.guest)
        return d
