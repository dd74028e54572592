"""Host perf coexistence (facts kvm-vpmu.md §2.2; v6 04/44, 16/44; the seed talk's RFC v1
vs v2 rules).

RFC v2+ (merged, `host_policy="rfc2"`):
- creating the first mediated vCPU of a VM (`perf_create_mediated_pmu`) fails with EBUSY
  while any host event that counts the guest (`exclude_guest = 0`) exists on the core PMU,
  e.g. the NMI watchdog (a per-CPU pinned cycles event); KVM warns "Failed to enable
  mediated vPMU, try disabling system wide perf events and nmi_watchdog.";
- while a mediated VM exists, opening such an event fails with EOPNOTSUPP.
RFC v1 (`host_policy="rfc1"`): nothing is refused; at each guest load such events go to
ERROR and never recover (perf_load_guest_context with `error_include_guest`).
"""

from __future__ import annotations

import errno
from typing import Any

from vpmu_core.api import PerfError, get_logger

from vpmu_mode_mediated.state import VmState

log = get_logger("vpmu.mode.mediated")

EBUSY_MESSAGE = "Failed to enable mediated vPMU, try disabling system wide perf events and nmi_watchdog."


def counts_guest(attr: Any) -> bool:
    """An event on the core PMU that counts guest mode (`!exclude_guest`)."""
    return not attr.exclude_guest


class Coexistence:
    """The per-host accounting of perf's `nr_mediated_pmu_vms` / `nr_include_guest_events`."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.host: Any = None
        self.mediated_vms = 0
        self.refused_opens = 0
        self.refused_vcpus = 0

    def attach(self, host: Any) -> None:
        self.host = host

    def include_guest_events(self) -> list[Any]:
        perf = self.host.perf
        return [e for e in perf.events if not e.closed and counts_guest(e.attr)]

    def create_mediated_pmu(self, vm: Any) -> None:
        """First mediated vCPU of `vm`: take the VM's reference (EBUSY under rfc2)."""
        if vm.mode_state is not None and vm.mode_state.mediated:
            return
        if self.policy == "rfc2":
            blocking = self.include_guest_events()
            if blocking:
                self.refused_vcpus += 1
                labels = ", ".join(f"{e.attr.label()}@cpu{e.cpu}" for e in blocking[:4])
                log.warning("mediated.ebusy", vm=vm.name, events=labels)
                raise PerfError(errno.EBUSY, f"{EBUSY_MESSAGE} (host events counting the guest: {labels})")
        vm.mode_state = VmState(mediated=True)
        self.mediated_vms += 1

    def release(self, vm: Any) -> None:
        if vm.mode_state is not None and vm.mode_state.mediated:
            vm.mode_state.mediated = False
            self.mediated_vms -= 1

    def perf_event_open(self, attr: Any) -> int | None:
        """A host perf_event_open: EOPNOTSUPP for !exclude_guest events while a mediated VM
        exists (rfc2); RFC v1 lets them open and errors them at the next guest load."""
        if self.policy == "rfc2" and self.mediated_vms > 0 and counts_guest(attr):
            self.refused_opens += 1
            return errno.EOPNOTSUPP
        return None
