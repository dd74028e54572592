"""What a mode declares about its exits for the exact fast-forward (hv/fast_forward.py): the
fields an exit overwrites with a value that depends on where the exit lies (a position, not
an amount), how each is recomputed, and which counters the exit switches.

An exit whose probes move a field by different amounts runs for real, at its exact point,
unless a declared rule reproduces the field after both probes: then a batch adds the exit in
bulk and sets the field to what that exit would have left. The core learns each rule's
constant from the probes and checks it on both; a rule that does not reproduce them keeps the
exit real. Plain frozen records, importable without the rest of the core.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ExitClock:
    """The host CPU's clock (`cpu.now`, cycles) at one fixed point of the exit, e.g. where a
    context is loaded: the exit's start plus an offset, the same in both probes."""


@dataclass(frozen=True)
class ExitGuestCycles:
    """The vCPU's guest cycles so far (`vcpu.stats.guest_cycles`, which no exit moves) plus a
    constant, the same in both probes."""


@dataclass(frozen=True)
class ExitConstant:
    """The same value after every exit of a kind (both probes leave it equal)."""


FieldRule = ExitClock | ExitGuestCycles | ExitConstant


@dataclass(frozen=True)
class FastForwardRules:
    """A mode's answer to `vpmu_fast_forward_rules`.

    `fields`: attribute of `vcpu.mode_state` -> how an exit leaves it.

    `switched_counters`: KVM indexes (GP i, fixed 32+i) of the guest counters an exit puts
    and loads. The core then takes, on the mode's word: after such an exit the guest's
    counter (`vcpu.pmu`) is a copy of the hardware counter of the same index; and the
    exit's work depends on each hardware counter's value only through two comparisons,
    with zero at the VM-exit (the put zeroes what is non-zero) and, at the VM-entry, with
    the value the exit's last host perf reschedule left in it (a load that skips the write
    when the counter already holds the guest's value). A batch keeps both comparisons
    true or false as they were in the probes, or does not start."""

    fields: Mapping[str, FieldRule] = field(default_factory=dict)
    switched_counters: tuple[int, ...] = ()
