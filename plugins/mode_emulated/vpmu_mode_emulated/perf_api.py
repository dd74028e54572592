"""KVM's calls into host perf, counted and charged to the vCPU.

The emulated vPMU's cost is dominated by these calls (costs.md: perf_event_create_kernel_counter
~30k cycles, release ~15k, pause + perf_event_period + enable ~4.5k), so every call goes
through here: `stats` counts them per vCPU and `vcpu.charge` bills the cost model, which
turns them into host-mode work of the vCPU thread.

The counterless vLBR event (a fake counter, INTEL_FIXED_VLBR_EVENT, that only claims a
facility resource) is opened with a prebuilt `HwEvent`, as an in-kernel perf user can.
"""

from __future__ import annotations

from typing import Any

from vpmu_core.api import HwEvent, OverflowHandler, PerfEvent, PerfEventAttr, get_logger

log = get_logger("vpmu.mode_emulated")


class KvmPerfCalls:
    """The perf API as KVM uses it (kernel-internal, local CPU: no IPI), with accounting.

    Charges: create -> `perf_event_create`, release -> `perf_event_release`, a reuse
    (pause + period + enable) -> `perf_event_reprogram`, a period change alone ->
    `perf_event_period`, a pause or an enable alone -> half of what a reuse costs beyond
    its period change (op `perf_event_pause` / `perf_event_enable`)."""

    def __init__(self, vcpu: Any, stats: Any) -> None:
        self.vcpu = vcpu
        self.stats = stats
        self.costs = vcpu.costs
        self.perf = vcpu.host.perf

    @property
    def half_reuse(self) -> int:
        return max(0, self.costs.perf_event_reprogram - self.costs.perf_event_period) // 2

    def create(self, attr: PerfEventAttr, handler: OverflowHandler, hw: HwEvent | None = None) -> PerfEvent:
        """perf_event_create_kernel_counter(&attr, cpu=-1, task=current, handler, pmc)."""
        self.stats["perf_event_create"] += 1
        self.vcpu.charge("perf_event_create", self.costs.perf_event_create)
        kw: dict[str, Any] = {
            "pid": self.vcpu.task.pid,
            "cpu": -1,
            "overflow_handler": handler,
            "owner": "kvm",
            "local": True,
        }
        ev = self.perf.perf_event_open(attr, hw=hw, **kw)
        log.debug("kvm.perf_create", vcpu=self.vcpu.name, eid=ev.id, label=attr.label(), state=ev.state.name)
        return ev

    def release(self, ev: PerfEvent) -> None:
        """perf_event_release_kernel."""
        self.stats["perf_event_release"] += 1
        self.vcpu.charge("perf_event_release", self.costs.perf_event_release)
        self.perf.release(ev, local=True)

    def pause(self, ev: PerfEvent, charge: bool = True) -> int:
        """perf_event_pause(event, reset=true): the count so far, zeroed in the event."""
        self.stats["perf_event_pause"] += 1
        if charge:
            self.vcpu.charge("perf_event_pause", self.half_reuse)
        return self.perf.pause(ev)

    def period(self, ev: PerfEvent, period: int, charge: bool = True) -> None:
        """perf_event_period."""
        self.stats["perf_event_period"] += 1
        if charge:
            self.vcpu.charge("perf_event_period", self.costs.perf_event_period)
        self.perf.set_period(ev, period)

    def enable(self, ev: PerfEvent, charge: bool = True) -> None:
        """perf_event_enable (an ERROR event goes back to INACTIVE and is scheduled again)."""
        self.stats["perf_event_enable"] += 1
        if charge:
            self.vcpu.charge("perf_event_enable", self.half_reuse)
        self.perf.enable(ev, local=True)

    def reprogram_in_place(self, ev: PerfEvent, period_of: Any) -> int | None:
        """pause + perf_event_period + enable of a live event, charged as one reuse, done in
        place by perf when that is exactly what the three calls do (`PerfSubsystem.
        reprogram_in_place`). Returns the paused count; None when perf declined (nothing was
        done or charged: make the three calls). Only inside an exit, where charges wait for
        the exit's end, so no time passes between the three calls either way."""
        if not getattr(self.vcpu, "_in_exit", False):
            return None
        value = self.perf.reprogram_in_place(ev, period_of)
        if value is None:
            return None
        st = self.stats
        st["perf_event_pause"] += 1
        self.charge_reuse()
        st["perf_event_period"] += 1
        st["perf_event_enable"] += 1
        return value

    def charge_reuse(self) -> None:
        """A reuse: pause + perf_event_period + enable, charged as one reprogram."""
        self.stats["perf_event_reprogram"] += 1
        self.vcpu.charge("perf_event_reprogram", self.costs.perf_event_reprogram)
