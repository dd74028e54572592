"""The vendor perf driver interface and the register port it programs.

The same driver instance type serves host perf (port = a host CPU's physical PMU) and guest
perf (port = a vCPU, whose MSR accesses may VM-exit). Like `struct x86_pmu` in
arch/x86/events/perf_event.h: hw_config, the constraint, enable/disable, read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from vpmu_core.perf.attr import PerfEventAttr


class RegisterPort(Protocol):
    """What a driver may touch: MSRs and RDPMC of one (physical or virtual) CPU."""

    def rdmsr(self, msr: int) -> int: ...
    def wrmsr(self, msr: int, value: int) -> None: ...
    def rdpmc(self, ecx: int) -> int: ...
    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]: ...


# A physical port also has `set_entry_loads(dict[int, int])` (the VMCS MSR autoload list):
# drivers that split host/guest counting through a global control (Intel) call it when the
# port has it (`perf_guest_get_msrs()` in arch/x86/events/intel/core.c), and `batched()`, a
# context manager under which the PMU decodes once for a sequence of writes (perf uses it
# around each reschedule, where nothing counts between the writes).


@dataclass(frozen=True)
class HwEvent:
    """A perf event translated for the hardware (x86 `hw_perf_event` essentials).

    `mask`: counters the event may use (bit i = GP i, bit 32+i = fixed i), Linux's
    `event_constraint.idxmsk64`. `resources`: exclusive facility resources it needs, with a
    sharing key (events with equal keys may share, e.g. LBR users with the same filter).
    A `mask` of 0 with resources is a counterless event (KVM's vLBR event).
    """

    config: int
    mask: int
    resources: tuple[tuple[str, str], ...] = ()
    #: Linux EVENT_CONSTRAINT_OVERLAP: the scheduler may backtrack for this event
    overlap: bool = False
    exclude_host: bool = False
    exclude_guest: bool = False
    usr: bool = True
    os: bool = True
    interrupt: bool = True
    #: the EventKind (int) the event counts, for ground truth; None if the model does not count it
    kind: int | None = None
    extra: dict[str, int] = field(default_factory=dict, compare=False, hash=False)

    @property
    def weight(self) -> int:
        return bin(self.mask).count("1")

    @property
    def counterless(self) -> bool:
        return self.mask == 0


class PerfDriver(Protocol):
    """Vendor perf driver. See docs/writing-plugins.md for the contract of each method."""

    #: counter slots the hardware has (same bit layout as HwEvent.mask)
    def counter_mask(self, port: RegisterPort) -> int: ...

    def hw_event(self, attr: PerfEventAttr, port: RegisterPort) -> HwEvent:
        """Translate attr (raise PerfError ENOENT/EINVAL/EOPNOTSUPP like hw_config). A
        `type="hardware"` config arrives as one of the generic names of `PERF_HW_IDS` (the
        core decoded PERF_COUNT_HW_* numbers): map it to the encoding, ENOENT if none."""
        ...

    def width(self, port: RegisterPort, idx: int) -> int: ...

    def start(self, port: RegisterPort, hw: HwEvent, idx: int, value: int) -> None:
        """Program counter `idx` for `hw` with initial raw `value` and enable it."""
        ...

    def stop(self, port: RegisterPort, hw: HwEvent, idx: int) -> int:
        """Disable counter `idx` and return its raw value."""
        ...

    def read(self, port: RegisterPort, idx: int) -> int: ...

    def write(self, port: RegisterPort, idx: int, value: int) -> None:
        """Set the raw value of a running counter (period reload after overflow)."""
        ...

    def ack(self, port: RegisterPort, idx: int) -> None:
        """Acknowledge an overflow of `idx` (clear its status bit where there is one)."""
        ...
