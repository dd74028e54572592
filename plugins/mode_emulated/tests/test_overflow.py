"""Overflow -> guest GLOBAL_STATUS bit -> one virtual PMI through the LVTPC at the next entry."""

from __future__ import annotations

import pytest
from emu_helpers import MODELS, Guest, make_host
from vpmu_core import ExitProfile, Work
from vpmu_core.events import EventKind
from vpmu_core.hv.lapic import LVT_MASKED, X2APIC_LVTPC

LVT_VECTOR = 0xFE


def _armed(cpu: str, exits: ExitProfile | None = None) -> Guest:
    host = make_host(cpu)
    v = host.create_vm(vcpus=1, pin=[0], exits=exits or ExitProfile(rate_per_s=0)).vcpus[0]
    v.wrmsr(X2APIC_LVTPC, LVT_VECTOR)  # fixed vector, unmasked
    return Guest(v)


@pytest.mark.parametrize("cpu", MODELS)
def test_overflow_delivers_one_pmi_and_masks_lvtpc(cpu: str) -> None:
    g = _armed(cpu, ExitProfile(rate_per_s=50_000))
    g.set_global(0)
    g.write(0, g.gp(0).mask + 1 - 1000)  # 1000 branches before the wrap
    g.sel(0, EventKind.BRANCHES, intr=True)
    g.set_global(1)
    g.v.execute(Work(instructions=100_000, branches=5000))
    assert len(g.v.pmis) == 1 and g.v.pmis[0].vector == LVT_VECTOR
    # KVM masks the LVTPC on delivery for Intel-compatible guests only (kvm_apic_local_deliver)
    assert bool(g.v.lapic.value & LVT_MASKED) == cpu.startswith("intel/")
    if g.gstatus is not None:
        assert g.v.rdmsr(g.gstatus) & 1
    assert g.read(0) == 4000  # wrapped, exact
    assert g.kpmu().stats["overflows_from_perf"] == 1
    # the next entry re-armed the period from the wrapped counter
    kp = g.kpmu().pmcs[0]
    assert kp.perf_event.period == ((-kp.counter) & kp.mask or kp.mask + 1)


@pytest.mark.parametrize("cpu", MODELS)
def test_no_int_no_pmi(cpu: str) -> None:
    g = _armed(cpu)
    g.set_global(0)
    g.write(0, g.gp(0).mask + 1 - 10)
    g.sel(0, EventKind.BRANCHES)
    g.set_global(1)
    g.v.execute(Work(instructions=1000, branches=100))
    assert g.v.pmis == []
    if g.gstatus is not None:
        assert g.v.rdmsr(g.gstatus) & 1


@pytest.mark.parametrize("cpu", MODELS)
def test_two_overflows_in_one_exit_give_one_pmi(cpu: str) -> None:
    g = _armed(cpu)
    g.set_global(0)
    g.write(0, g.gp(0).mask + 1 - 10)
    g.write(1, g.gp(1).mask + 1 - 10)
    g.sel(0, EventKind.BRANCHES, intr=True)
    g.sel(1, EventKind.BRANCHES, intr=True)
    g.set_global(0b11)
    g.v.execute(Work(instructions=1000, branches=100))  # one span: both wrap before one exit
    assert g.kpmu().stats["pmi_requests"] == 2
    assert len(g.v.pmis) == 1


@pytest.mark.parametrize("cpu", MODELS)
def test_emulated_instruction_wrap_injects_at_that_entry(cpu: str) -> None:
    """An emulated instruction that wraps the counter: detected in pmc_pause_counter at the
    entry ending the exit, status bit + PMI there (KVM __kvm_perf_overflow(pmc, false)).
    The WRMSR of the counter is counted after it took effect (DESIGN §5), so writing the
    last value before the wrap is what wraps it."""
    g = _armed(cpu)
    g.set_global(0)
    g.sel(0, EventKind.INSTRUCTIONS, intr=True)
    g.set_global(1)  # enabling write: counted after it took effect (the event exists now)
    assert g.v.pmis == []
    g.write(0, g.gp(0).mask)  # the write retires after it: counter + 1 wraps to 0
    assert g.kpmu().stats["overflows_emulated"] == 1
    assert len(g.v.pmis) == 1
    if g.gstatus is not None:
        assert g.v.rdmsr(g.gstatus) & 1  # the status read itself retires after reading
    first = 1 if g.gstatus is not None else 0
    assert g.read(0) == first  # this RDMSR reads before it retires itself
    assert g.read(0) == first + 1  # ... and the previous RDMSR has been counted since


@pytest.mark.parametrize("cpu", MODELS)
def test_preset_counter_is_wrapped_by_the_enabling_write(cpu: str) -> None:
    """Issue 11: a counter preset to its last value before the wrap is wrapped by the
    enabling write itself (kvm_emulate_wrmsr, then kvm_skip_emulated_instruction ->
    kvm_pmu_instruction_retired under the new GLOBAL_CTRL/selector), so the next RDMSR of
    GLOBAL_STATUS sees the overflow bit and the counter then reads 1. No PMI: KVM latches
    pmc->intr when reprogram_counter() creates the perf event, after the overflow check of
    that same reprogram (__kvm_perf_overflow reads the old pmc->intr)."""
    g = _armed(cpu)
    g.set_global(0)
    g.write(0, g.gp(0).mask)
    g.sel(0, EventKind.INSTRUCTIONS, intr=True)  # without a global control: the enabling write
    g.set_global(1)
    assert g.kpmu().stats["overflows_emulated"] == 1
    assert g.v.pmis == []
    if g.gstatus is not None:
        assert g.v.rdmsr(g.gstatus) & 1
        assert g.read(0) == 1
    else:
        assert g.read(0) == 0
