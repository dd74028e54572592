"""KVM's per-counter and per-vCPU vPMU state (`struct kvm_pmc`, `struct kvm_pmu`).

Kept apart from the vendor's guest-visible register model (`vcpu.pmu`): the vendor owns
the registers and their #GP rules, this state owns what KVM adds on top of them, namely
the base value the guest counter is computed from, the perf event that backs it and the
request bitmaps that defer perf work to the next VM-entry (arch/x86/kvm/pmu.h, pmu.c).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vpmu_core.api import FIXED_BASE, PerfEvent, Pmc

if TYPE_CHECKING:
    from vpmu_mode_emulated.vlbr import Vlbr


def pmc_name(pmc: Pmc) -> str:
    """Stable, vendor-neutral counter name used in reports and silent-error records."""
    return f"fixed{pmc.idx - FIXED_BASE}" if pmc.is_fixed else f"gp{pmc.idx}"


@dataclass(eq=False)
class KvmPmc:
    """`struct kvm_pmc`: `counter` is the base the guest value is computed from
    (pmc_read_counter = counter + emulated_counter + live perf count, masked)."""

    pmc: Pmc
    counter: int = 0
    emulated_counter: int = 0
    #: the config the current perf event was created for (0 = none; reset on release)
    current_config: int = 0
    perf_event: PerfEvent | None = None
    is_paused: bool = True
    #: INT (PMI enable) captured when the perf event was created (`pmc->intr`)
    intr: bool = False
    #: whether the current perf event has ever been seen ACTIVE (silent-error cause)
    ever_active: bool = False
    #: `pmc_name(pmc)`, computed once (every VM-entry reports each counter by name)
    name: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = pmc_name(self.pmc)

    @property
    def idx(self) -> int:
        return self.pmc.idx

    @property
    def mask(self) -> int:
        return self.pmc.mask


@dataclass(eq=False)
class KvmPmu:
    """`struct kvm_pmu` of one vCPU, plus the bookkeeping the simulator reports."""

    vcpu: Any
    pmcs: dict[int, KvmPmc] = field(default_factory=dict)
    #: bit idx: the counter must be reprogrammed at the next KVM_REQ_PMU
    reprogram_pmi: int = 0
    #: bit idx: the guest wrote one of the counter's MSRs during this time slice
    pmc_in_use: int = 0
    need_cleanup: bool = False
    #: KVM_REQ_PMU pending (serviced at the next VM-entry)
    req_pmu: bool = False
    #: the vCPU was scheduled out since its last load (`vcpu->scheduled_out`)
    scheduled_out: bool = False
    #: guest MSR -> pmc idx whose MSRs it is (for `pmc_in_use`)
    msr_to_idx: dict[int, int] = field(default_factory=dict)
    #: last control signature seen per pmc idx (a control write requests a reprogram only
    #: when it changed something, as KVM compares `data != pmc->eventsel`)
    signatures: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    #: pmcs whose controls changed during the current guest write
    last_changed: int = 0
    #: KVM is inside perf calls: perf's reschedule callbacks see half-updated state
    busy: bool = False
    vlbrs: dict[str, Vlbr] = field(default_factory=dict)
    #: counter name -> the cause the silent-error tracker holds open for it (what this
    #: vCPU last reported; only the emulated mode reports these counters)
    silent_reported: dict[str, str] = field(default_factory=dict)
    #: KVM's perf calls for this vCPU (`KvmPerfCalls`)
    api: Any = None
    stats: Counter[str] = field(default_factory=Counter)

    @property
    def all_valid_pmc_idx(self) -> int:
        m = 0
        for i in self.pmcs:
            m |= 1 << i
        return m

    @property
    def event_count(self) -> int:
        """`pmu->event_count`: perf events KVM holds for this vCPU (vLBR included)."""
        n = sum(1 for kp in self.pmcs.values() if kp.perf_event is not None)
        return n + sum(1 for v in self.vlbrs.values() if v.event is not None)

    def request_reprogram(self, mask: int) -> None:
        """`kvm_pmu_request_counter_reprogram` / `reprogram_counters`: set the bits and raise
        KVM_REQ_PMU; the perf work happens at the next VM-entry."""
        if mask:
            self.reprogram_pmi |= mask
            self.req_pmu = True


def control_signature(pmc: Pmc) -> tuple[Any, ...]:
    """What KVM compares to decide that a control write changed a counter."""
    return (pmc.config, pmc.local_en, pmc.global_en, pmc.usr, pmc.os, pmc.int_en)


def bits(mask: int) -> list[int]:
    """Set bit positions in ascending order (`kvm_for_each_pmc` order)."""
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out
