"""The driver side of the entry-load host/guest split: one global control, two values.

Linux (`intel_guest_get_msrs`, `cpuc->intel_ctrl_host_mask` / `intel_ctrl_guest_mask`)
keeps `exclude_guest` events out of guest mode and `exclude_host` events out of host mode by
giving the global control two values: the live register (host mode) drops guest-only
counters, the value VM-entry loads (guest mode) drops host-only ones. `GlobalCtrlSplit`
is that bookkeeping for any vendor with an atomically switched global control; the
register model's side is `vpmu_core.hw.enables.entry_split`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GlobalCtrlSplit:
    """Per port: which counters perf started, and which of them are host- or guest-only."""

    #: counters started (global control bits)
    enabled: int = 0
    #: exclude_guest events: count in host mode only
    host_only: int = 0
    #: exclude_host events: count in guest mode only
    guest_only: int = 0

    def set(self, idx: int, on: bool, *, exclude_guest: bool = False, exclude_host: bool = False) -> None:
        """Counter `idx` started (`on`) with these exclusions, or stopped."""
        bit = 1 << idx
        self.enabled = self.enabled | bit if on else self.enabled & ~bit
        self.host_only = self.host_only | bit if on and exclude_guest else self.host_only & ~bit
        self.guest_only = self.guest_only | bit if on and exclude_host else self.guest_only & ~bit

    @property
    def host_value(self) -> int:
        """The live (host-mode) global control."""
        return self.enabled & ~self.guest_only

    @property
    def guest_value(self) -> int:
        """The global control VM-entry loads (guest mode)."""
        return self.enabled & ~self.host_only

    def apply(self, port: Any, msr: int) -> None:
        """Write the live value to `msr` and, where the port is a physical CPU (it has
        `set_entry_loads`), the guest-mode value into its VM-entry loads. `set_entry_loads`
        replaces the whole list, so the other entries are kept."""
        port.wrmsr(msr, self.host_value)
        set_loads = getattr(port, "set_entry_loads", None)
        if set_loads is not None:
            loads = dict(getattr(port, "entry_loads", None) or {})
            loads[msr] = self.guest_value
            set_loads(loads)
