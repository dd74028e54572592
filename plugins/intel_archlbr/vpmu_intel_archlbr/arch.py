"""Architectural LBR (Sapphire Rapids): CPUID, MSRs and XSAVE component 15 (facts §4).

Why these rules:

* CPUID.07H.0:EDX[19] enumerates Arch LBR; leaf 1CH gives the supported depths (EAX[7:0],
  bit n => 8 x (n+1)), CPL / branch-filter / call-stack capabilities (EBX[2:0]) and record
  capabilities (ECX: mispredict, timed LBR, branch type); CPUID.(0DH,1).EAX[3] XSAVES and
  ECX[15] (IA32_XSS bit 15); CPUID.(0DH,0FH).EAX the component size. A guest's leaf 1CH shows
  only the depths the depth rule allows (policy.py).
* IA32_LBR_CTL 0x14CE: LBREn (0), OS (1), USR (2), CALL_STACK (3), branch classes 22:16 with
  *capture* semantics (unlike LBR_SELECT). Valid mask 0x7F000F, and, as KVM checks, CPL bits
  need CPUID.1CH:EBX[0], CALL_STACK EBX[2], bits 22:16 EBX[1]; anything else #GP.
* IA32_LBR_DEPTH 0x14CF: only a depth the CPUID of this CPU/vCPU enumerates (else #GP), and
  *any* write, even of the current value, zeroes every record (Linux's fast reset).
* FROM 0x1500+i, TO 0x1600+i, INFO 0x1200+i, entry 0 the youngest, no TOS MSR; i >= the
  current LBR_DEPTH is #GP. LER_FROM 0x1DD, LER_TO 0x1DE, LER_INFO 0x1E0.
* IA32_DEBUGCTL exists but has no LBR bit (writes of bit 0 are discarded, read 0).
* XSAVES / XRSTORS of component 15: xsave.py.
"""

from __future__ import annotations

from typing import Any

from vpmu_core.api import EAX, ECX, EDX, ConfigError, CpuidTable, get_logger, gp
from vpmu_intel_archlbr import policy
from vpmu_intel_archlbr.binding import FacilityHooks, hash_seed
from vpmu_intel_archlbr.debugctl import MSR_IA32_DEBUGCTL
from vpmu_intel_archlbr.recording import ARCH_BR_TYPE, ZERO_ENTRY, Branch, BranchType, Entry
from vpmu_intel_archlbr.state import MSR_LER_FROM, MSR_LER_TO, LbrStateBase, _canonical
from vpmu_intel_archlbr.xsave import XFEATURE_LBR, ArchLbrComponent, component_size

log = get_logger("vpmu.lbr")

MSR_ARCH_LBR_CTL = 0x14CE
MSR_ARCH_LBR_DEPTH = 0x14CF
MSR_ARCH_LBR_FROM_0 = 0x1500
MSR_ARCH_LBR_TO_0 = 0x1600
MSR_ARCH_LBR_INFO_0 = 0x1200
MSR_LER_INFO = 0x1E0
MAX_DEPTH = 64  # CPUID.1CH:EAX[7:0] can enumerate at most 8 x 8

CTL_LBREN = 1 << 0
CTL_OS = 1 << 1
CTL_USR = 1 << 2
CTL_CALL_STACK = 1 << 3
CTL_FILTER_MASK = 0x7F << 16
CTL_VALID = 0x7F000F
#: LBR_CTL capture bit of each branch class (facts §4.3)
CTL_CAPTURE = {
    BranchType.COND: 1 << 16,
    BranchType.NEAR_REL_JMP: 1 << 17,
    BranchType.NEAR_IND_JMP: 1 << 18,
    BranchType.NEAR_REL_CALL: 1 << 19,
    BranchType.NEAR_IND_CALL: 1 << 20,
    BranchType.NEAR_RET: 1 << 21,
    BranchType.FAR: 1 << 22,
}

CPUID7_EDX_ARCH_LBR = 1 << 19
CPUID_D1_EAX_XSAVES = 1 << 3
CPUID1C_EBX_CPL = 1 << 0
CPUID1C_EBX_FILTER = 1 << 1
CPUID1C_EBX_CALL_STACK = 1 << 2
CPUID1C_ECX_MISPRED = 1 << 0
CPUID1C_ECX_TIMED = 1 << 1
CPUID1C_ECX_BR_TYPE = 1 << 2

INFO_MISPRED = 1 << 63
INFO_CYC_CNT_VALID = 1 << 60
INFO_BR_TYPE_SHIFT = 56


class ArchLbrState(LbrStateBase):
    """Arch LBR registers of one CPU or vCPU."""

    name = "arch_lbr"
    xsave_component = XFEATURE_LBR

    def __init__(
        self, facility: ArchLbr, guest: bool, depths: tuple[int, ...], depth: int, max_depth: int, seed: int
    ) -> None:
        super().__init__(guest, depth, seed, legacy_lbr=False)
        self.caps = facility.caps
        self.record_caps = facility.record_caps
        #: depths this CPU/vCPU enumerates in CPUID.1CH and accepts in LBR_DEPTH
        self.depths = depths
        #: entries in the XSAVE component (CPUID.(0DH,0FH).EAX = 40 + 24 x max_depth)
        self.max_depth = max_depth
        self.ctl = 0
        self.ler_info = 0

    # ---- MSRs --------------------------------------------------------------------------
    @property
    def control_msrs(self) -> tuple[int, ...]:
        """vCPU-state MSRs (KVM Arch LBR series: LBR_CTL in the VMCS guest field, LBR_DEPTH
        emulated because every write resets records); see LegacyLbrState.control_msrs."""
        return (MSR_IA32_DEBUGCTL, MSR_ARCH_LBR_CTL, MSR_ARCH_LBR_DEPTH)

    @property
    def passthrough_msrs(self) -> frozenset[int]:
        """The record MSRs (FROM/TO/INFO below the depth) a vLBR-style mode may pass through
        while the guest owns the LBR (the KVM Arch LBR series' `vmx_passthrough_lbr_msrs`)."""
        d = self.depth
        return frozenset(
            [MSR_ARCH_LBR_FROM_0 + i for i in range(d)]
            + [MSR_ARCH_LBR_TO_0 + i for i in range(d)]
            + [MSR_ARCH_LBR_INFO_0 + i for i in range(d)]
        )

    @property
    def depth(self) -> int:
        """IA32_LBR_DEPTH."""
        return self.ring.depth

    @property
    def ctl_valid(self) -> int:
        v = CTL_LBREN
        if self.caps & CPUID1C_EBX_CPL:
            v |= CTL_OS | CTL_USR
        if self.caps & CPUID1C_EBX_CALL_STACK:
            v |= CTL_CALL_STACK
        if self.caps & CPUID1C_EBX_FILTER:
            v |= CTL_FILTER_MASK
        return v & CTL_VALID

    def _record_index(self, msr: int) -> tuple[int, int] | None:
        for field, base in enumerate((MSR_ARCH_LBR_FROM_0, MSR_ARCH_LBR_TO_0, MSR_ARCH_LBR_INFO_0)):
            if base <= msr < base + MAX_DEPTH:
                return field, msr - base
        return None

    def has_msr(self, msr: int) -> bool:
        if msr in (MSR_ARCH_LBR_CTL, MSR_ARCH_LBR_DEPTH, MSR_IA32_DEBUGCTL, MSR_LER_FROM, MSR_LER_TO, MSR_LER_INFO):
            return True
        return self._record_index(msr) is not None

    def rdmsr(self, msr: int) -> int:
        v = self._common_rd(msr)
        if v is not None:
            return v
        if msr == MSR_ARCH_LBR_CTL:
            return self.ctl
        if msr == MSR_ARCH_LBR_DEPTH:
            return self.depth
        if msr == MSR_LER_INFO:
            return self.ler_info
        field, i = self._checked_index(msr)
        return self.ring.logical(i)[field]

    def wrmsr(self, msr: int, value: int) -> None:
        if self._common_wr(msr, value):
            return
        if msr == MSR_ARCH_LBR_CTL:
            self.write_ctl(value)
        elif msr == MSR_ARCH_LBR_DEPTH:
            self.write_depth(value)
        elif msr == MSR_LER_INFO:
            self.ler_info = value
        else:
            field, i = self._checked_index(msr)
            if field != 2:
                _canonical(msr, value)
            e = list(self.ring.logical(i))
            e[field] = value
            self.ring.set_logical(i, (e[0], e[1], e[2]))

    def _checked_index(self, msr: int) -> tuple[int, int]:
        idx = self._record_index(msr)
        if idx is None:
            raise gp(f"MSR {msr:#x} is not an Arch LBR MSR")
        if idx[1] >= self.depth:
            raise gp(f"Arch LBR record {idx[1]} >= LBR_DEPTH {self.depth}")
        return idx

    def write_ctl(self, value: int) -> None:
        bad = value & ~self.ctl_valid
        if bad:
            raise gp(f"LBR_CTL reserved bits {bad:#x}")
        self.ctl = value

    def write_depth(self, value: int) -> None:
        """Only an enumerated depth; any write zeroes every record (facts §4.5)."""
        if value not in self.depths:
            raise gp(f"LBR_DEPTH {value} not in {self.depths}")
        self.ring.zero(value)

    def state_msrs(self) -> list[int]:
        """The MSRs component 15 holds (CTL, DEPTH, LER, records below the current depth)."""
        msrs = [MSR_ARCH_LBR_CTL, MSR_ARCH_LBR_DEPTH, MSR_LER_FROM, MSR_LER_TO, MSR_LER_INFO]
        for i in range(self.depth):
            msrs += [MSR_ARCH_LBR_FROM_0 + i, MSR_ARCH_LBR_TO_0 + i, MSR_ARCH_LBR_INFO_0 + i]
        return msrs

    # ---- recording ---------------------------------------------------------------------
    def _enabled(self) -> bool:
        return bool(self.ctl & CTL_LBREN)

    def _cpl_captured(self, cpl: int) -> bool:
        return bool(self.ctl & (CTL_OS if cpl == 0 else CTL_USR))

    def _type_captured(self, kind: BranchType) -> bool:
        return bool(self.ctl & CTL_CAPTURE[kind])

    @property
    def call_stack(self) -> bool:
        return bool(self.ctl & CTL_CALL_STACK)

    def _encode(self, b: Branch) -> Entry:
        rc = self.record_caps
        info = b.cycles
        if rc & CPUID1C_ECX_TIMED:
            info |= INFO_CYC_CNT_VALID
        if rc & CPUID1C_ECX_BR_TYPE:
            info |= ARCH_BR_TYPE[b.kind] << INFO_BR_TYPE_SHIFT
        if rc & CPUID1C_ECX_MISPRED and b.mispred:
            info |= INFO_MISPRED
        return (b.from_ip, b.to_ip, info)

    # ---- XSAVE component 15 --------------------------------------------------------------
    @property
    def in_use(self) -> bool:
        """XINUSE[15]: the component is not in its initial configuration."""
        return not self.component().is_init()

    def component(self) -> ArchLbrComponent:
        """The image XSAVES would write now."""
        entries = tuple(self.ring.logical(i) if i < self.depth else ZERO_ENTRY for i in range(self.max_depth))
        return ArchLbrComponent(self.ctl, self.depth, self.ler_from, self.ler_to, self.ler_info, entries)

    def xsave_size(self) -> int:
        return component_size(self.max_depth)

    def xsaves(self) -> bytes:
        return self.component().pack()

    def xrstors(self, data: bytes) -> None:
        """XRSTORS against the current IA32_LBR_DEPTH (b"" = initial configuration)."""
        self.load_image(data, self.depth)

    def load_image(self, data: bytes, physical_depth: int) -> bool:
        """XRSTORS of `data` on an LBR whose IA32_LBR_DEPTH is `physical_depth`; this state's
        own DEPTH is unchanged. Returns True if the records were zeroed by a depth mismatch."""
        if not data:
            comp = ArchLbrComponent.init(self.depth, self.max_depth)
        else:
            comp = ArchLbrComponent.unpack(data, self.max_depth)
            if comp.ctl & ~self.ctl_valid:
                raise gp(f"XRSTORS: LBR_CTL reserved bits {comp.ctl & ~self.ctl_valid:#x}")
        self.ctl = comp.ctl
        self.ler_from, self.ler_to, self.ler_info = comp.ler_from, comp.ler_to, comp.ler_info
        self.ring.zero()
        if data and comp.depth != physical_depth:
            self.wipes += 1
            return True
        for i in range(self.depth):
            self.ring.set_logical(i, comp.entries[i])
        return False

    # ---- migration -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """KVM_GET_MSRS of DEPTH and DEBUGCTL + the component image (bit-exact)."""
        return {
            "kind": "arch_lbr",
            "depth": self.depth,
            "debugctl": self.debugctl.value,
            "xsave": self.xsaves().hex(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """KVM_SET_MSRS(LBR_DEPTH) first (so XRSTORS's depth check passes), then XRSTORS."""
        if state.get("kind") != "arch_lbr":
            raise ConfigError("state.facilities.arch_lbr", f"not an Arch LBR state: {state.get('kind')!r}")
        policy.check_depth(state["depth"], self.depths, "state.facilities.arch_lbr.depth")
        self.write_depth(state["depth"])
        self.xrstors(bytes.fromhex(state["xsave"]))
        self.debugctl.write(state["debugctl"])


class ArchLbr(FacilityHooks):
    """The `arch_lbr` facility of one composed model (Facility protocol).

    Options: ``depth_rule`` ("host_only" | "any", policy.py); ``host_depth`` (the depth the
    host runs with, default the largest enumerated, as Linux picks fls(EAX[7:0]) x 8).
    Per VM: ``GuestPmuConfig(facility_options={"arch_lbr": {"depth": N}})`` sets the guest's
    initial LBR_DEPTH (N must be allowed by the rule).
    """

    name = "arch_lbr"
    resource: str | None = "lbr"

    def __init__(self, model: Any, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - {"depth_rule", "host_depth"})
        if unknown:
            raise ConfigError("facility_options.arch_lbr", f"unknown option(s) {unknown}", "depth_rule, host_depth")
        self.model = model
        data = dict(model.features["arch_lbr"])
        self.supported: tuple[int, ...] = tuple(sorted(int(d) for d in data["depths"]))
        self.rule: policy.DepthRule = policy.check_rule(options.get("depth_rule", policy.DEFAULT_RULE))
        self.host_depth = policy.check_depth(
            options.get("host_depth", self.supported[-1]), self.supported, "facility_options.arch_lbr.host_depth"
        )
        self.caps = int(bool(data.get("cpl_filter"))) * CPUID1C_EBX_CPL
        self.caps |= int(bool(data.get("branch_filter"))) * CPUID1C_EBX_FILTER
        self.caps |= int(bool(data.get("call_stack"))) * CPUID1C_EBX_CALL_STACK
        self.record_caps = int(data.get("record_caps", 0))
        self.max_depth = self.supported[-1]
        self._made = 0

    def depths(self, guest: bool) -> tuple[int, ...]:
        return policy.guest_depths(self.rule, self.host_depth, self.supported) if guest else self.supported

    def make_state(self, guest: bool, depth: int | None = None) -> ArchLbrState:
        """Host states start at the host depth (Linux writes it at boot); guest states at the
        host depth too (KVM's initial guest LBR_DEPTH), or `depth` if the rule allows it."""
        allowed = self.depths(guest)
        d = self.host_depth if depth is None else policy.check_depth(depth, allowed, "arch_lbr.depth")
        self._made += 1
        return ArchLbrState(self, guest, allowed, d, self.max_depth, hash_seed("arch_lbr", guest, self._made))

    def adjust_cpuid(self, table: CpuidTable, guest: bool) -> None:
        """Leaf 7 EDX[19], 1CH (depths per the rule), 0DH.1 XSAVES + XSS[15], 0DH.0FH size."""
        table.update_bits(0x7, 0, EDX, set_mask=CPUID7_EDX_ARCH_LBR)
        table.set(0x1C, (policy.depth_bitmap(self.depths(guest)), self.caps, self.record_caps, 0))
        table.update_bits(0xD, 1, EAX, set_mask=CPUID_D1_EAX_XSAVES)
        table.update_bits(0xD, 1, ECX, set_mask=1 << XFEATURE_LBR)
        table.set(0xD, (component_size(self.max_depth), 0, 1, 0), subleaf=XFEATURE_LBR)

    def configure_guest(self, vcpu: Any, state: Any) -> None:
        """The VM's `facility_options["arch_lbr"]["depth"]` becomes the guest's LBR_DEPTH."""
        opts = vcpu.vm.pmu_config.facility_options.get(self.name, {})
        if "depth" in opts:
            d = policy.check_depth(opts["depth"], state.depths, "pmu.facility_options.arch_lbr.depth")
            state.write_depth(d)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "depths": list(self.supported),
            "host_depth": self.host_depth,
            "depth_rule": self.rule,
            "xsave_size": component_size(self.max_depth),
        }
