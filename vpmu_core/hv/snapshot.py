"""What the report reads of a VM and its vCPUs: plain records the hypervisor layer builds
(`VM.snapshot()`, `VCpu.snapshot()`), so metrics/ never reaches into hv/ objects (issue 13)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vpmu_core.perf.snapshot import EventSnapshot


@dataclass(frozen=True)
class VcpuSnapshot:
    """One vCPU's figures now: its exits, guest time, PMIs, what its guest would read from
    each counter, and each facility's summary."""

    name: str
    #: exit reason -> count, sorted by reason
    exits: dict[str, int]
    total_exits: int
    fastpath_exits: int
    userspace_exits: int
    guest_cycles: int
    pmis: int
    #: counter name -> value (the mode's `vpmu_guest_counter_values`, else the registers)
    guest_counters: dict[str, int]
    #: facility name -> its `summary()`, for the facilities that have one
    facilities: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class VmSnapshot:
    """One VM now (destroyed ones too: they keep their figures)."""

    name: str
    vcpus: tuple[VcpuSnapshot, ...]
    #: the guest kernel's perf events by id, with their ground truth (none if it never
    #: opened guest perf)
    guest_events: tuple[EventSnapshot, ...]
    #: the guest perf API's call counts, None if the guest never opened guest perf
    guest_perf_stats: dict[str, int] | None
    #: errors the guest kernel's perf driver hit (a #GP on an MSR it expected)
    guest_kernel_errors: tuple[dict[str, Any], ...]
