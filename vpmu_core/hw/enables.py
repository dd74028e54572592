"""How a counter's enables become `Pmc.count_host` / `Pmc.count_guest`.

Every vendor's `_decode` ends the same way: the counter's bit in a global control (Intel
IA32_PERF_GLOBAL_CTRL, AMD PerfCntrGlobalCtl, or "always on" where there is none) decides
`global_en`; host-mode work counts under the live control, guest-mode work under the one
VM-entry loads (`entry_split`), and a vendor filter (AMD HostOnly/GuestOnly with
EFER.SVME) may take either away. Local enable and CPL stay separate fields: the counting
plans combine them (`PmuBase.refresh`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vpmu_core.hw.pmc import Pmc
    from vpmu_core.hw.pmu import PmuBase

#: a global control with every bit set: the counter has no global enable (Intel v1, AMD
#: without PerfMonV2)
ALWAYS_ON = -1


def entry_split(pmu: PmuBase, msr: int, live: int) -> tuple[int, int]:
    """(control host-mode work counts under, control guest-mode work counts under).

    A physical PMU counts guest-mode work under the value VM-entry loads into `msr` (the
    VMCS "load IA32_PERF_GLOBAL_CTRL" control and MSR-load lists, SDM Vol. 3C 25.7-25.8;
    `PmuBase.entry_loads`), or under `live` when nothing loads it. A guest-visible PMU has
    one control for both."""
    if pmu.guest:
        return live, live
    return live, pmu.entry_loads.get(msr, live)


def fold_enables(pmc: Pmc, host_ctrl: int, guest_ctrl: int, *, host_ok: bool = True, guest_ok: bool = True) -> None:
    """Set `global_en`, `count_host` and `count_guest` of `pmc` from its bit (`pmc.idx`) in
    the host-mode and guest-mode global controls (`ALWAYS_ON` where the PMU has none);
    `host_ok` / `guest_ok` are a vendor's mode filter on top (AMD HostOnly/GuestOnly)."""
    pmc.global_en = bool(host_ctrl >> pmc.idx & 1)
    pmc.count_host = pmc.global_en and host_ok
    pmc.count_guest = bool(guest_ctrl >> pmc.idx & 1) and guest_ok
