"""The vLBR pattern, generically, for any facility with an exclusive perf resource
(arch/x86/kvm/vmx/pmu_intel.c `intel_pmu_create_guest_lbr_event`,
`intel_pmu_handle_lbr_msrs_access`, `vmx_passthrough_lbr_msrs`, `intel_pmu_cleanup`).

When the guest turns the facility on (a write to one of its control MSRs) or first touches
one of its record MSRs, KVM creates a counterless, pinned, exclude_host, per-task perf event
that only claims the resource (on Intel: config INTEL_FIXED_VLBR_EVENT, branch stack
CALL_STACK|USER so perf saves/restores the records across host context switches). Before
every VM-entry: event ACTIVE -> the record MSRs pass through; not ACTIVE (a host per-CPU
pinned user took the resource) -> they are intercepted again, guest reads give 0 and writes
are dropped, and the records stop filling: a silent error. At the lazy cleanup the event is
released if the guest has the facility off.

What the facility must tell the mode (optional attributes of its per-vCPU state):
`control_msrs` (MSRs that are plain vCPU state, like DEBUGCTL: always emulated; absent =
none) and `passthrough_msrs` (record MSRs the core may pass straight to the hardware while
the event is ACTIVE; absent = none, i.e. they stay intercepted and are emulated on the
vCPU's state, which gives the same values at the price of the exits).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vpmu_core.api import EventState, HwEvent, PerfError, PerfEventAttr, get_logger

from vpmu_mode_emulated.silent import event_cause

if TYPE_CHECKING:
    from vpmu_core.api import PerfEvent

    from vpmu_mode_emulated.kvm_pmc import KvmPmu
    from vpmu_mode_emulated.perf_api import KvmPerfCalls

log = get_logger("vpmu.mode_emulated")

#: the sharing key of the guest's claim: never equal to a host user's branch filter, so a
#: host LBR user and the vLBR event exclude each other (one LBR, one owner)
GUEST_KEY = "guest"


class Vlbr:
    """KVM's vLBR event and interception state for one facility of one vCPU."""

    def __init__(self, kpmu: KvmPmu, api: KvmPerfCalls, name: str, state: Any) -> None:
        self.kpmu = kpmu
        self.api = api
        self.name = name
        self.state = state
        self.resource: str = state.resource
        self.event: PerfEvent | None = None
        self.ever_active = False
        #: record MSRs currently passed through (set before each VM-entry)
        self.msr_passthrough = False
        #: the guest touched the records while the event was ACTIVE (pmc_in_use VLBR bit)
        self.in_use = False
        self.control = frozenset(getattr(state, "control_msrs", ()) or ())
        self.passthrough_ok = frozenset(getattr(state, "passthrough_msrs", ()) or ())

    # ---- the event ---------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.event is not None and self.event.state == EventState.ACTIVE

    def create(self) -> bool:
        """`intel_pmu_create_guest_lbr_event`: a counterless pinned per-task event."""
        if self.event is not None:
            return True
        vcpu = self.kpmu.vcpu
        attr = PerfEventAttr(
            type="raw",
            config=0,
            pinned=True,
            exclude_host=True,
            branch_sample_type=("call_stack", "user"),
            name=f"kvm {vcpu.name} v{self.name}",
        )
        hw = HwEvent(config=0, mask=0, resources=((self.resource, GUEST_KEY),), exclude_host=True, interrupt=False)
        self.kpmu.busy = True
        try:
            self.event = self.api.create(attr, _no_overflow, hw=hw)
        except PerfError as e:
            self.kpmu.stats["vlbr_create_failed"] += 1
            log.debug("kvm.vlbr_create_failed", vcpu=vcpu.name, errno=e.errno)
            return False
        finally:
            self.kpmu.busy = False
        self.ever_active = False
        self.kpmu.stats["vlbr_creates"] += 1
        return True

    def release(self) -> None:
        """`intel_pmu_release_guest_lbr_event`."""
        if self.event is None:
            return
        ev, self.event = self.event, None
        self.msr_passthrough = False
        self.in_use = False
        self.kpmu.stats["vlbr_releases"] += 1
        self.api.release(ev)
        self.sync_blocked()

    # ---- guest accesses (intercepted) ---------------------------------------------------
    def write(self, msr: int, value: int) -> None:
        if msr in self.control:
            self.state.wrmsr(msr, value)
            if self.state.active and self.event is None:
                self.create()  # vmx_set_msr(DEBUGCTL) with LBR set
            self.sync_blocked()
            return
        if self.event is None and not self.create():
            return  # "dummy": the write is dropped
        if self.active:
            self.state.wrmsr(msr, value)
            self.in_use = True
        else:
            self.in_use = False
            self.kpmu.stats["vlbr_dropped_writes"] += 1

    def read(self, msr: int) -> int:
        if msr in self.control:
            return self.state.rdmsr(msr)
        if self.event is None and not self.create():
            return 0
        if self.active:
            self.in_use = True
            return self.state.rdmsr(msr)
        self.in_use = False
        self.kpmu.stats["vlbr_zero_reads"] += 1
        return 0

    def intercepted(self, msr: int) -> bool:
        return not (self.msr_passthrough and msr in self.passthrough_ok)

    # ---- run-loop points ----------------------------------------------------------------
    def before_entry(self) -> None:
        """`vmx_passthrough_lbr_msrs`: pass the records through only while ACTIVE."""
        if self.event is None:
            self.msr_passthrough = False
        elif not self.active:
            if self.msr_passthrough:
                self.kpmu.stats["vlbr_passthrough_lost"] += 1
            self.msr_passthrough = False
            self.in_use = False
        else:
            self.msr_passthrough = True
        self.sync_blocked()

    def cleanup(self) -> None:
        """Vendor part of the lazy cleanup: release the event if the guest has it off."""
        if not self.state.active:
            self.release()

    # ---- silent errors ------------------------------------------------------------------
    def silent_cause(self) -> str | None:
        if not self.state.active:
            return None
        if self.active:
            self.ever_active = True
            return None
        return event_cause(self.event, self.ever_active)

    def sync_blocked(self) -> None:
        """While the guest has the facility on but does not own the resource, its records
        must not fill (the host user owns the hardware)."""
        blocked = self.kpmu.vcpu.facility_blocked
        if self.state.active and not self.active:
            blocked.add(self.name)
        else:
            blocked.discard(self.name)


def _no_overflow(ev: Any, overshoot: int) -> None:
    """The vLBR event has no counter and never overflows."""
