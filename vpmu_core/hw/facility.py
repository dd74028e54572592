"""Optional PMU facilities (LBR, Arch LBR, later PEBS/IBS): the interface plugins implement.

A facility attaches per-CPU (physical) and per-vCPU (virtual) state to a model: extra MSRs,
CPUID bits, an XSAVE component, an exclusive resource host perf events compete for, and a
recorder the engine feeds with every span of work while it is enabled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from vpmu_core.hw.cpuid import CpuidTable


class FacilityState(Protocol):
    """One instance of a facility: on a host CPU (`guest=False`) or a vCPU (`guest=True`)."""

    name: str
    #: exclusive resource claimed through the perf scheduler (e.g. "lbr"), or None
    resource: str | None
    #: XSAVE state-component number (e.g. 15 for Arch LBR), or None
    xsave_component: int | None

    def has_msr(self, msr: int) -> bool: ...
    def rdmsr(self, msr: int) -> int: ...
    def wrmsr(self, msr: int, value: int) -> None: ...

    @property
    def active(self) -> bool:
        """Whether the facility records right now (e.g. DEBUGCTL.LBR / LBR_CTL.LBREn)."""
        ...

    def record(self, counts: tuple[int, ...], cpl: int, guest: bool, position: int) -> None:
        """Feed one span of work (only called while `active`). `position` is a deterministic
        stream position (cycles executed so far by the owner), to derive branch records."""
        ...

    def xsaves(self) -> bytes: ...
    def xrstors(self, data: bytes) -> None: ...
    def xsave_size(self) -> int: ...
    def state_msrs(self) -> list[int]: ...
    def snapshot(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...


class Facility(Protocol):
    """A facility attached to one composed CPU model (built by the facility plugin's factory)."""

    name: str
    resource: str | None

    def make_state(self, guest: bool, depth: int | None = None) -> FacilityState: ...
    def adjust_cpuid(self, table: CpuidTable, guest: bool) -> None: ...
    def describe(self) -> dict[str, Any]: ...
