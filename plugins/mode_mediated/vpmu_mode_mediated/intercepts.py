"""Which guest PMU accesses VM-exit (v6 20/44 and 22/44; facts kvm-vpmu.md §2.4).

- Event selectors and the fixed-counter control: always intercepted, so the event filter
  can be enforced on the copy hardware gets (`eventsel_hw`, `fixed_ctr_ctrl_hw`); every
  alias of a selector is one (the vendor's `eventsel_msrs`, e.g. AMD's K7 EVNTSELx).
- Counters the guest has: passed through (every alias the guest has: Intel legacy PMCx,
  full-width A_PMCx only if the guest has full-width writes, FIXED_CTRx; AMD PERF_CTRx and
  the K7 aliases). Counters beyond the guest's count are not in the guest PMU, so they stay
  intercepted (and #GP there).
- Global control/status/overflow registers: passed through iff the guest's GP and fixed
  counts equal the host's and the guest version is > 1 (`kvm_need_perf_global_ctrl_intercept`).
- RDPMC: passed through iff the counts *and* widths equal the host's (v6 decoupled it from
  the global-control rule for AMD).
"""

from __future__ import annotations

from typing import Any

from vpmu_mode_mediated.requirements import VendorRules
from vpmu_mode_mediated.state import VcpuState


def compute_intercepts(guest: Any, host: Any, rules: VendorRules) -> VcpuState:
    """Build a vCPU's interception state from its guest PMU and the host's physical PMU."""
    if guest.version == 0:
        return VcpuState(enabled=False)
    passthrough: set[int] = set()
    for pmc in guest.pmcs:
        passthrough.update(guest.counter_msrs(pmc))
    same_counts = len(guest.gp) == len(host.gp) and len(guest.fixed) == len(host.fixed)
    global_pt = same_counts and guest.version > 1
    guest_globals = dict(guest.global_msrs())
    if global_pt:
        for role in rules.passthrough_global_roles:
            if role in guest_globals:
                passthrough.add(guest_globals[role])
    same_widths = all(g.width == h.width for g, h in zip(guest.gp, host.gp, strict=False)) and all(
        g.width == h.width for g, h in zip(guest.fixed, host.fixed, strict=False)
    )
    # never pass through what must be filtered, whatever a vendor's aliases say
    controls = set(guest.control_msrs())
    passthrough -= controls
    selectors = selector_map(guest)
    return VcpuState(
        enabled=True,
        gp_idx=tuple(p.idx for p in guest.gp),
        fixed_idx=tuple(p.idx for p in guest.fixed),
        passthrough=frozenset(passthrough),
        global_passthrough=global_pt,
        rdpmc_passthrough=same_counts and same_widths,
        selector_msrs=selectors,
        fixed_ctrl_msr=guest.fixed_ctrl_msr() if guest.fixed else None,
        guest_globals=guest_globals,
        state_msrs=frozenset(m for p in guest.pmcs for m in guest.counter_msrs(p)) | frozenset(guest_globals.values()),
    )


def selector_map(guest: Any) -> dict[int, int]:
    """Selector MSR -> GP counter index, every alias included (`eventsel_msrs`: AMD's K7
    EVNTSELx alias the PerfCtrExtCore PERF_CTLx of counters 0-3). A write through an MSR
    missing here would reach the guest's register but never the hardware selector."""
    return {msr: pmc.idx for pmc in guest.gp for msr in guest.eventsel_msrs(pmc)}
