"""Guest counter values as KVM computes them (`pmc_read_counter` / `pmc_write_counter`).

Installed as the `CounterBackend` of the vCPU's guest-visible PMU, so every path that reads
or writes a counter through the vendor's register model (RDMSR, RDPMC, KVM_GET/SET_MSRS)
gets KVM's arithmetic: the value is a base plus the emulated count plus whatever the perf
event counted since it was last folded, with no scaling for time the event did not run
("FIXME: Scaling needed?"). That missing time is exactly where silent errors hide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vpmu_core.api import CounterBackend, Pmc

if TYPE_CHECKING:
    from vpmu_mode_emulated.kvm_pmc import KvmPmc, KvmPmu
    from vpmu_mode_emulated.perf_api import KvmPerfCalls


def get_sample_period(kp: KvmPmc, counter_value: int) -> int:
    """`get_sample_period`: events until the guest counter wraps; 0 means a full period."""
    period = (-counter_value) & kp.mask
    return period or kp.mask + 1


def pmc_read_counter(kp: KvmPmc) -> int:
    """`pmc_read_counter`: counter + emulated_counter + perf_event_read_value (if the event
    exists and is not paused), masked to the counter width."""
    counter = kp.counter + kp.emulated_counter
    ev = kp.perf_event
    if ev is not None and not kp.is_paused and not ev.closed:
        counter += ev.read().value
    return counter & kp.mask


def pmc_write_counter(kp: KvmPmc, value: int, api: KvmPerfCalls) -> None:
    """`pmc_write_counter`: drop unconsumed emulated counts, move the base so the current
    value becomes `value` (no reprogram), then `pmc_update_sample_period`."""
    kp.emulated_counter = 0
    kp.counter += value - pmc_read_counter(kp)
    kp.counter &= kp.mask
    ev = kp.perf_event
    if ev is None or kp.is_paused:
        return
    # KVM events always sample (sample_period != 0), so the period is always updated.
    api.period(ev, get_sample_period(kp, kp.counter))


class EmulatedBackend(CounterBackend):
    """The guest PMU's counters, backed by KVM state and host perf events."""

    def __init__(self, kpmu: KvmPmu, api: KvmPerfCalls) -> None:
        self.kpmu = kpmu
        self.api = api

    def read(self, pmc: Pmc) -> int:
        kp = self.kpmu.pmcs.get(pmc.idx)
        if kp is None:
            return pmc.value
        return pmc_read_counter(kp)

    def write(self, pmc: Pmc, value: int) -> None:
        kp = self.kpmu.pmcs.get(pmc.idx)
        if kp is None:
            pmc.value = value & pmc.mask
            return
        self.kpmu.busy = True
        try:
            pmc_write_counter(kp, value & pmc.mask, self.api)
        finally:
            self.kpmu.busy = False
