"""IA32_DEBUGCTL (0x1D9): the LBR enable of legacy LBR and the freeze-on-PMI control of both.

Why it is its own module: both facilities own DEBUGCTL (nothing else in the model does) but
accept different bits. Bare metal takes every architectural bit of facts §3.1; a guest gets
KVM's rule (`vmx_get_supported_debugctl` + `vmx_set_msr`): LBR and FREEZE_LBRS_ON_PMI when
the guest has legacy LBR; BTF, and LBR without legacy LBR, are *dropped* (accepted, read back
0: kvm_pr_unimpl_wrmsr); any other bit is #GP. On CPUs without model-specific LBR (Sapphire
Rapids) DEBUGCTL.LBR writes are discarded and read 0 (Arch LBR spec, facts §3.1).
"""

from __future__ import annotations

from vpmu_core.api import gp

MSR_IA32_DEBUGCTL = 0x1D9

DEBUGCTL_LBR = 1 << 0
DEBUGCTL_BTF = 1 << 1
DEBUGCTL_BUS_LOCK_DETECT = 1 << 2
DEBUGCTL_TR = 1 << 6
DEBUGCTL_BTS = 1 << 7
DEBUGCTL_BTINT = 1 << 8
DEBUGCTL_BTS_OFF_OS = 1 << 9
DEBUGCTL_BTS_OFF_USR = 1 << 10
DEBUGCTL_FREEZE_LBRS_ON_PMI = 1 << 11
DEBUGCTL_FREEZE_PERFMON_ON_PMI = 1 << 12
DEBUGCTL_UNCORE_PMI_EN = 1 << 13
DEBUGCTL_FREEZE_WHILE_SMM = 1 << 14

#: every bit facts §3.1 names (bare metal)
HOST_VALID = (
    DEBUGCTL_LBR
    | DEBUGCTL_BTF
    | DEBUGCTL_BUS_LOCK_DETECT
    | DEBUGCTL_TR
    | DEBUGCTL_BTS
    | DEBUGCTL_BTINT
    | DEBUGCTL_BTS_OFF_OS
    | DEBUGCTL_BTS_OFF_USR
    | DEBUGCTL_FREEZE_LBRS_ON_PMI
    | DEBUGCTL_FREEZE_PERFMON_ON_PMI
    | DEBUGCTL_UNCORE_PMI_EN
    | DEBUGCTL_FREEZE_WHILE_SMM
)


class DebugCtl:
    """One DEBUGCTL register with the write rule of its owner (host or guest, legacy or arch)."""

    __slots__ = ("value", "guest", "legacy_lbr")

    def __init__(self, guest: bool, legacy_lbr: bool) -> None:
        self.value = 0
        self.guest = guest
        self.legacy_lbr = legacy_lbr

    @property
    def valid(self) -> int:
        """Bits that are stored."""
        if self.guest:
            return DEBUGCTL_LBR | DEBUGCTL_FREEZE_LBRS_ON_PMI if self.legacy_lbr else DEBUGCTL_FREEZE_LBRS_ON_PMI
        return HOST_VALID if self.legacy_lbr else HOST_VALID & ~DEBUGCTL_LBR

    @property
    def dropped(self) -> int:
        """Bits that are accepted but not stored (read back 0)."""
        if self.guest:
            return (DEBUGCTL_BTF | DEBUGCTL_LBR) & ~self.valid
        return DEBUGCTL_LBR & ~self.valid

    def write(self, value: int) -> None:
        bad = value & ~(self.valid | self.dropped)
        if bad:
            raise gp(f"DEBUGCTL reserved bits {bad:#x}")
        self.value = value & self.valid

    @property
    def lbr(self) -> bool:
        return bool(self.value & DEBUGCTL_LBR)

    @property
    def freeze_on_pmi(self) -> bool:
        return bool(self.value & DEBUGCTL_FREEZE_LBRS_ON_PMI)
