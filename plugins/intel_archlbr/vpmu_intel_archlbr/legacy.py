"""Legacy (model-specific) LBR: Skylake / Ice Lake layout (facts §3).

Why these rules: a guest kernel probes LBR exactly like Linux `intel_pmu_lbr_init_skl` plus
`wrmsr_safe`, and KVM passes the MSRs through or emulates them (facts kvm-vpmu §1.8):

* IA32_DEBUGCTL 0x1D9: LBR (bit 0) enables recording, FREEZE_LBRS_ON_PMI (bit 11); see
  debugctl.py for reserved bits (#GP) and dropped bits.
* MSR_LBR_SELECT 0x1C8: bits 0-8 *suppress* capture (CPL_EQ_0, CPL_NEQ_0, JCC, NEAR_REL_CALL,
  NEAR_IND_CALL, NEAR_RET, NEAR_IND_JMP, NEAR_REL_JMP, FAR_BRANCH); bit 9 EN_CALLSTACK (only
  where the model has call-stack mode); other bits #GP.
* MSR_LBR_TOS 0x1C9: index of the youngest record, guest-writable as KVM allows (its
  passthrough); a value >= depth is #GP.
* FROM 0x680+i, TO 0x6C0+i, INFO 0xDC0+i (formats 5/7: FROM/TO canonical addresses, INFO
  [63] MISPRED, [15:0] cycles). i >= depth is #GP and so is another family's layout (Core2's
  0x40/0x60 is not an MSR here): a guest finds the depth by writing FROM MSRs until #GP.
* LER 0x1DD/0x1DE (LASTINTFROMIP/TOIP): canonical, read/write.

PERF_CAPABILITIES[5:0] (the LBR format) belongs to intel_arch's PMU; this facility only reads
the model's `features["lbr"]` (format 5 on Skylake/Ice Lake).
"""

from __future__ import annotations

from typing import Any

from vpmu_core.api import ConfigError, CpuidTable, get_logger, gp
from vpmu_intel_archlbr.binding import FacilityHooks, hash_seed
from vpmu_intel_archlbr.debugctl import MSR_IA32_DEBUGCTL
from vpmu_intel_archlbr.recording import Branch, BranchType, Entry, canonical
from vpmu_intel_archlbr.state import MSR_LER_FROM, MSR_LER_TO, LbrStateBase, _canonical

log = get_logger("vpmu.lbr")

#: the widest ring any legacy family has (FROM and TO bases are 0x40 apart on NHM+ ... we
#: claim 64 slots so index >= depth faults as #GP from this facility, not as "unknown MSR")
MAX_SLOTS = 64

LBR_SELECT_CPL_EQ_0 = 1 << 0
LBR_SELECT_CPL_NEQ_0 = 1 << 1
LBR_SELECT_CALLSTACK = 1 << 9
#: LBR_SELECT suppress bit of each branch class (facts §3.2)
SELECT_SUPPRESS = {
    BranchType.COND: 1 << 2,
    BranchType.NEAR_REL_CALL: 1 << 3,
    BranchType.NEAR_IND_CALL: 1 << 4,
    BranchType.NEAR_RET: 1 << 5,
    BranchType.NEAR_IND_JMP: 1 << 6,
    BranchType.NEAR_REL_JMP: 1 << 7,
    BranchType.FAR: 1 << 8,
}
LBR_INFO_MISPRED = 1 << 63
LBR_FORMAT_EIP_FLAGS = 3
LBR_FORMAT_EIP_FLAGS2 = 4
LBR_FORMAT_INFO = 5
LBR_FORMAT_INFO2 = 7


class LegacyLbrState(LbrStateBase):
    """Legacy LBR registers of one CPU or vCPU."""

    name = "lbr"
    xsave_component = None

    def __init__(self, data: dict[str, Any], guest: bool, seed: int) -> None:
        super().__init__(guest, int(data["depth"]), seed, legacy_lbr=True)
        self.fmt = int(data["format"])
        self.select_msr = int(data["select"])
        self.tos_msr = int(data["tos"])
        self.from_base = int(data["from_base"])
        self.to_base = int(data["to_base"])
        self.info_base: int | None = data.get("info_base")
        self.has_callstack = bool(data.get("call_stack"))
        self.select = 0

    # ---- FacilityState: MSRs -------------------------------------------------------------
    @property
    def control_msrs(self) -> tuple[int, ...]:
        """MSRs that are plain vCPU state (KVM: DEBUGCTL lives in the VMCS and is always
        emulated); an emulated mode's vLBR logic creates its event on them."""
        return (MSR_IA32_DEBUGCTL,)

    @property
    def passthrough_msrs(self) -> frozenset[int]:
        """What `vmx_passthrough_lbr_msrs` (arch/x86/kvm/vmx/pmu_intel.c) stops intercepting
        while the vLBR event is ACTIVE: LBR_SELECT, TOS and the FROM/TO/INFO records. The
        core routes a passed-through facility access to this vCPU state, which is what holds
        the guest's records while the guest owns the LBR."""
        msrs = {self.select_msr, self.tos_msr}
        for i in range(self.depth):
            msrs.add(self.from_base + i)
            msrs.add(self.to_base + i)
            if self.info_base is not None:
                msrs.add(self.info_base + i)
        return frozenset(msrs)

    @property
    def depth(self) -> int:
        return self.ring.depth

    @property
    def select_valid(self) -> int:
        return 0x3FF if self.has_callstack else 0x1FF

    def _slot(self, msr: int) -> tuple[str, int] | None:
        for kind, base in (("from", self.from_base), ("to", self.to_base), ("info", self.info_base)):
            if base is not None and base <= msr < base + MAX_SLOTS:
                return kind, msr - base
        return None

    def has_msr(self, msr: int) -> bool:
        if msr in (MSR_IA32_DEBUGCTL, self.select_msr, self.tos_msr, MSR_LER_FROM, MSR_LER_TO):
            return True
        return self._slot(msr) is not None

    def rdmsr(self, msr: int) -> int:
        v = self._common_rd(msr)
        if v is not None:
            return v
        if msr == self.select_msr:
            return self.select
        if msr == self.tos_msr:
            return self.ring.tos
        slot = self._slot(msr)
        if slot is None:
            raise gp(f"MSR {msr:#x} is not a legacy LBR MSR")
        kind, i = slot
        if i >= self.depth:
            raise gp(f"LBR record {i} >= depth {self.depth}")
        return self.ring.slots[i][("from", "to", "info").index(kind)]

    def wrmsr(self, msr: int, value: int) -> None:
        if self._common_wr(msr, value):
            return
        if msr == self.select_msr:
            if value & ~self.select_valid:
                raise gp(f"LBR_SELECT reserved bits {value & ~self.select_valid:#x}")
            self.select = value
            return
        if msr == self.tos_msr:
            if value >= self.depth:
                raise gp(f"LBR_TOS {value} >= depth {self.depth}")
            self.ring.tos = value
            return
        slot = self._slot(msr)
        if slot is None:
            raise gp(f"MSR {msr:#x} is not a legacy LBR MSR")
        kind, i = slot
        if i >= self.depth:
            raise gp(f"LBR record {i} >= depth {self.depth}")
        if kind != "info" and self.fmt in (LBR_FORMAT_INFO, LBR_FORMAT_INFO2):
            _canonical(msr, value)
        f, t, n = self.ring.slots[i]
        self.ring.slots[i] = (value, t, n) if kind == "from" else (f, value, n) if kind == "to" else (f, t, value)

    def state_msrs(self) -> list[int]:
        """Every MSR a context switch or migration moves (MSR by MSR: no XSAVE component)."""
        msrs = [MSR_IA32_DEBUGCTL, self.select_msr, self.tos_msr, MSR_LER_FROM, MSR_LER_TO]
        for i in range(self.depth):
            msrs += [self.from_base + i, self.to_base + i]
            if self.info_base is not None:
                msrs.append(self.info_base + i)
        return msrs

    # ---- recording ---------------------------------------------------------------------
    def _enabled(self) -> bool:
        return self.debugctl.lbr

    def _cpl_captured(self, cpl: int) -> bool:
        return not self.select & (LBR_SELECT_CPL_EQ_0 if cpl == 0 else LBR_SELECT_CPL_NEQ_0)

    def _type_captured(self, kind: BranchType) -> bool:
        return not self.select & SELECT_SUPPRESS[kind]

    @property
    def call_stack(self) -> bool:
        return bool(self.select & LBR_SELECT_CALLSTACK)

    def _encode(self, b: Branch) -> Entry:
        if self.fmt in (LBR_FORMAT_INFO, LBR_FORMAT_INFO2):
            info = (LBR_INFO_MISPRED if b.mispred else 0) | b.cycles
            return (b.from_ip, b.to_ip, info)
        from_ip = b.from_ip
        if self.fmt in (LBR_FORMAT_EIP_FLAGS, LBR_FORMAT_EIP_FLAGS2):
            from_ip = canonical(from_ip) & ~(1 << 63) | (int(b.mispred) << 63)
        return (from_ip, b.to_ip, 0)

    # ---- save / restore ------------------------------------------------------------------
    def _values(self) -> list[int]:
        return [self.rdmsr(m) for m in self.state_msrs()]

    def xsave_size(self) -> int:
        """Bytes of `xsaves()`: 8 per state MSR (no architectural component exists)."""
        return 8 * len(self.state_msrs())

    def xsaves(self) -> bytes:
        """The state MSRs in `state_msrs()` order, 8 bytes each (little endian). Not an XSAVE
        component (`xsave_component` is None: XsaveArea skips it); it lets a mode move
        legacy state through the same calls, charged MSR by MSR (`switch_cost`)."""
        return b"".join(v.to_bytes(8, "little") for v in self._values())

    def xrstors(self, data: bytes) -> None:
        """Load an `xsaves()` image; b"" is the reset state (everything 0)."""
        if not data:
            self._reset()
            return
        msrs = self.state_msrs()
        if len(data) != 8 * len(msrs):
            raise gp(f"legacy LBR image is {len(data)} bytes, expected {8 * len(msrs)}")
        values = [int.from_bytes(data[8 * k : 8 * k + 8], "little") for k in range(len(msrs))]
        self._load(dict(zip(msrs, values, strict=True)))

    def _reset(self) -> None:
        self.debugctl.value = 0
        self.select = 0
        self.ler_from = self.ler_to = 0
        self.ring.zero()

    def _load(self, values: dict[int, int]) -> None:
        """Host-initiated writes (KVM_SET_MSRS): DEBUGCTL last so nothing records mid-way."""
        for msr, v in values.items():
            if msr != MSR_IA32_DEBUGCTL:
                self.wrmsr(msr, v)
        self.wrmsr(MSR_IA32_DEBUGCTL, values.get(MSR_IA32_DEBUGCTL, 0))

    def snapshot(self) -> dict[str, Any]:
        """Migration state: every state MSR by address (KVM_GET_MSRS)."""
        return {
            "kind": "lbr",
            "depth": self.depth,
            "msrs": {f"{m:#x}": v for m, v in zip(self.state_msrs(), self._values(), strict=True)},
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "lbr" or state.get("depth") != self.depth:
            raise ConfigError("state.facilities.lbr", f"depth {state.get('depth')} cannot load here", self.depth)
        self._load({int(k, 16): v for k, v in state["msrs"].items()})


class LegacyLbr(FacilityHooks):
    """The `lbr` facility of one composed model (Facility protocol)."""

    name = "lbr"
    resource: str | None = "lbr"

    def __init__(self, model: Any, options: dict[str, Any]) -> None:
        if options:
            raise ConfigError("facility_options.lbr", f"unknown option(s) {sorted(options)}", "(none)")
        self.model = model
        self.data: dict[str, Any] = dict(model.features["lbr"])
        self._made = 0

    def make_state(self, guest: bool, depth: int | None = None) -> LegacyLbrState:
        """A fresh LBR; `depth` must be the model's (legacy LBR depth is fixed)."""
        if depth is not None and depth != self.data["depth"]:
            raise gp(f"legacy LBR depth is {self.data['depth']}, not {depth}")
        self._made += 1
        return LegacyLbrState(self.data, guest, seed=hash_seed("lbr", guest, self._made))

    def adjust_cpuid(self, table: CpuidTable, guest: bool) -> None:
        """Legacy LBR is enumerated by the model (DisplayFamily/Model + PERF_CAPABILITIES),
        not by CPUID bits: nothing to change."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "depth": self.data["depth"], "format": self.data["format"]}
