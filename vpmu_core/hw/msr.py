"""Declarative MSRs: reset value, writable mask, reserved-bit policy, read-only, write side
effects and aliases (several indexes, one storage).

A vendor may register plain read/write callbacks with `PmuBase._reg`, or describe a
register with `Register` and let `PmuBase.add_register` apply the architectural rules:

* reserved bits (outside `writable`): `"gp"` raises #GP (Intel: SDM Vol. 3B 20.2, KVM
  vmx/pmu_intel.c), `"drop"` silently clears them (AMD: "AMD ignores writes to reserved
  bits", arch/x86/kvm/pmu.c);
* `read_only`: a write is #GP (`"gp"`) or ignored (`"drop"`), except host-initiated writes
  (KVM_SET_MSRS) when `host_writable`;
* `write_1_to_clear`: the written ones clear bits of `target` (e.g. GLOBAL_OVF_CTRL);
* `write_1_to_set`: the written ones set bits of `target` (e.g. GLOBAL_STATUS_SET);
* `compute`: a derived read-only register, its value computed from other state at each
  read (e.g. GLOBAL_INUSE); every write #GPs, host-initiated ones included;
* `host_ignored`: host-initiated writes are ignored (KVM acts on some registers only for
  guest writes, e.g. AMD PerfCntrGlobalStatusClr/Set: ``if (!msr_info->host_initiated)``);
* `on_write(old, new)`: side effects after the value changed (e.g. re-decode controls).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from vpmu_core.errors import gp

ReservedPolicy = Literal["gp", "drop"]


@dataclass
class Register:
    """One architectural register (possibly reachable through several MSR indexes)."""

    name: str
    reset: int = 0
    writable: int = (1 << 64) - 1
    reserved: ReservedPolicy = "gp"
    read_only: bool = False
    host_writable: bool = True
    write_1_to_clear: Register | None = None
    write_1_to_set: Register | None = None
    reads_as: int | None = None
    compute: Callable[[], int] | None = None
    host_ignored: bool = False
    on_write: Callable[[int, int], None] | None = None
    value: int = field(init=False)

    def __post_init__(self) -> None:
        self.value = self.reset
        if self.compute is not None:
            self.read_only, self.host_writable, self.reserved = True, False, "gp"

    def read(self) -> int:
        if self.compute is not None:
            return self.compute()
        return self.value if self.reads_as is None else self.reads_as

    def write(self, value: int, host_initiated: bool = False) -> None:
        if host_initiated and self.host_ignored:
            return
        if self.read_only and not (host_initiated and self.host_writable):
            if self.reserved == "gp":
                raise gp(f"{self.name} is read-only")
            return
        bad = value & ~self.writable
        if bad:
            if self.reserved == "gp" and not host_initiated:
                raise gp(f"{self.name}: reserved bits {bad:#x}")
            value &= self.writable
        if self.write_1_to_clear is not None:
            target = self.write_1_to_clear
            old = target.value
            target.value = old & ~value
            if target.on_write is not None and target.value != old:
                target.on_write(old, target.value)
            return
        if self.write_1_to_set is not None:
            target = self.write_1_to_set
            old = target.value
            target.value = old | value
            if target.on_write is not None and target.value != old:
                target.on_write(old, target.value)
            return
        old = self.value
        self.value = value
        if self.on_write is not None and old != value:
            self.on_write(old, value)

    def reset_value(self) -> None:
        self.value = self.reset
