"""Per-vCPU, per-VM and per-CPU state of the mediated vPMU (KVM's `struct kvm_pmu`
additions, the per-VM `perf_create_mediated_pmu` reference and perf's per-CPU
`guest_ctx_loaded` / guest LVTPC).

The guest's saved PMU state lives in `vcpu.pmu` (the guest-visible vendor PMU): selectors,
counters, global control and status. While the context is loaded, the physical PMU holds
the live counters and status; `vcpu.pmu` is refreshed from it at put.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: PERF_GUEST_MEDIATED_PMI_VECTOR (v6 08/44), /proc/interrupts "VPMI"
MEDIATED_PMI_VECTOR = 0xF5


@dataclass
class VcpuState:
    """One vCPU's mediated vPMU. `enabled` = "has mediated PMU" (enable_mediated_pmu &&
    pmu->version, v6 16/44); a vCPU without one keeps every PMU access intercepted."""

    enabled: bool
    #: guest counter indexes (KVM idx: GP 0..n, fixed 32+i) in load order
    gp_idx: tuple[int, ...] = ()
    fixed_idx: tuple[int, ...] = ()
    #: MSRs the guest reaches without a VM-exit
    passthrough: frozenset[int] = frozenset()
    #: GLOBAL_CTRL/STATUS/... passed through (kvm_need_perf_global_ctrl_intercept() false)
    global_passthrough: bool = False
    rdpmc_passthrough: bool = False
    #: selector MSR -> guest pmc index (always intercepted: the filter needs them)
    selector_msrs: dict[int, int] = field(default_factory=dict)
    fixed_ctrl_msr: int | None = None
    #: guest MSR role -> index of the global registers the guest has
    guest_globals: dict[str, int] = field(default_factory=dict)
    #: guest MSRs whose value lives in the loaded hardware (counters, global registers):
    #: an intercepted access to one of them syncs with the hardware first
    state_msrs: frozenset[int] = frozenset()
    #: host CPU the context is loaded on (None = put)
    loaded_cpu: int | None = None
    #: selector values programmed in hardware at the last load (eventsel_hw)
    eventsel_hw: dict[int, int] = field(default_factory=dict)
    fixed_ctrl_hw: int = 0
    #: KVM_REQ_PMU after KVM_SET_PMU_EVENT_FILTER: reprogram selectors at the next entry
    filter_dirty: bool = False
    # blind-window bookkeeping: CPU clock and guest cycles at load
    load_cycles: int = 0
    load_guest_cycles: int = 0
    #: cycles inside the window that are not KVM work: pending before load + the load itself
    load_offset: int = 0
    # statistics
    loads: int = 0
    puts: int = 0
    blind_cycles: int = 0


@dataclass
class VmState:
    """The VM holds a reference on the mediated PMU (perf_create_mediated_pmu at the first
    KVM_CREATE_VCPU, released at VM destruction)."""

    mediated: bool = False


@dataclass
class CpuState:
    """A host CPU: which vCPU's PMU context is loaded and where its LVTPC points."""

    index: int
    loaded: Any = None  # the VCpu whose context is loaded, or None
    #: host LVTPC: "nmi" (host perf) or the mediated vector while guest LVTPC is loaded
    lvtpc: str = "nmi"
