"""Guest perf: the core perf scheduler and the vendor driver, running inside the guest.

Its register port is the vCPU itself, so every MSR the guest driver touches goes through
the mode (VM-exits where intercepted). Guest timer ticks rotate multiplexed events; the
guest PMI handler reloads sampling periods and unmasks the LVTPC, as Linux does
(arch/x86/events/core.c perf_events_lapic_init, x86_pmu_handle_irq).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from vpmu_core.errors import GuestFault, PerfError
from vpmu_core.hv.lapic import LVT_MASKED, X2APIC_LVTPC
from vpmu_core.perf.attr import PerfEventAttr
from vpmu_core.perf.core import PerfSubsystem
from vpmu_core.perf.event import PerfEvent

if TYPE_CHECKING:
    from vpmu_core.hv.vcpu import VCpu
    from vpmu_core.hv.vm import VM
    from vpmu_core.perf.driver import RegisterPort

APIC_DM_NMI = 0x400


class GuestCpu:
    """A vCPU as perf sees it from inside the guest."""

    def __init__(self, vcpu: VCpu) -> None:
        self.vcpu = vcpu
        self.index = vcpu.index
        self.port: RegisterPort = vcpu  # a destroyed VM's vCPU becomes a register view (vm.py)
        self.current_task: Any = None

    def now_ns(self) -> int:
        return self.vcpu.now_ns()


class GuestPerf:
    """`vm.guest_perf`: perf_event_open etc. inside the guest (per-vCPU events)."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm
        self.cpus: list[GuestCpu] = [GuestCpu(v) for v in vm.vcpus]
        self.perf = PerfSubsystem(
            vm.host.model.make_driver(), self.cpus, name=f"guest:{vm.name}", mux_interval_ns=vm.guest_mux_interval_ns
        )
        self.perf.truth_source = self._truth_for
        self.perf.tracer = vm.host.tracer
        self.events: list[PerfEvent] = []
        self._lapic_ready: set[int] = set()
        #: errors the guest kernel hit (a #GP in its perf driver), for the report
        self.errors: list[dict[str, Any]] = []

    def perf_event_open(
        self, attr: PerfEventAttr, pid: int = -1, cpu: int = 0, group: PerfEvent | None = None
    ) -> PerfEvent:
        """perf_event_open(2) in the guest: per-vCPU events (pid must be -1)."""
        if 0 <= cpu < len(self.cpus):
            self._init_vcpu(self.vm.vcpus[cpu])
        known = set(map(id, self.perf.events))
        try:
            ev = self.perf.perf_event_open(attr, pid, cpu, group, owner="guest")
        except GuestFault as f:
            # the guest driver touched an MSR this guest does not have: in the guest kernel
            # that is an "unchecked MSR access error", and the syscall fails; drop the
            # half-opened event without touching its registers again
            for e in [e for e in self.perf.events if id(e) not in known]:
                self._drop(e)
            vcpu = self.vm.vcpus[cpu] if 0 <= cpu < len(self.cpus) else None
            self.errors.append(
                {
                    "vcpu": vcpu.name if vcpu is not None else None,
                    "call": "perf_event_open",
                    "event": attr.label(),
                    "errno": "EIO",
                    "fault": f"vector {f.vector}: {f.reason}",
                    "time_ns": vcpu.now_ns() if vcpu is not None else 0,
                }
            )
            raise PerfError(errno.EIO, f"guest kernel: unchecked MSR access ({f.reason})") from None
        self.events.append(ev)
        return ev

    def _drop(self, ev: PerfEvent) -> None:
        """Forget an event whose programming faulted (its state is unknown)."""
        perf = self.perf
        for ctx in perf.ctx:
            if ev in ctx.active:
                ctx.active.remove(ev)
            if ev in ctx.groups:
                ctx.groups.remove(ev)
        if ev in perf.events:
            perf.events.remove(ev)
        ev.closed = True

    def _truth_for(self, ev: PerfEvent) -> int:
        a = ev.attr
        rows = tuple(r for r in (2, 3) if not (r == 2 and a.exclude_kernel) and not (r == 3 and a.exclude_user))
        host = self.vm.host
        return host.truth_rows(host.truth.owners.get(self.vm.vcpus[ev.cpu].name), ev.hw.kind, rows)

    def _init_vcpu(self, vcpu: VCpu) -> None:
        if vcpu.index in self._lapic_ready:
            return
        self._lapic_ready.add(vcpu.index)
        vcpu.wrmsr(X2APIC_LVTPC, APIC_DM_NMI)  # perf_events_lapic_init
        vcpu.guest_pmi_handler = self._handle_pmi
        vcpu.guest_tick = self._tick

    def _tick(self, vcpu: VCpu) -> None:
        self.perf.rotate(vcpu.index)

    def _handle_pmi(self, vcpu: VCpu) -> None:
        """The guest's PMI handler (x86_pmu_handle_irq): read every sampling counter once,
        re-arm the overflowed ones, then unmask the LVTPC for the next PMI."""
        self.perf.handle_irq(vcpu.index)
        vcpu.wrmsr(X2APIC_LVTPC, vcpu.lapic.value & ~LVT_MASKED)
