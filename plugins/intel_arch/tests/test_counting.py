"""Counting driven directly on the PMU: enables, CPL filters, overflow, PMIs, the host/guest
GLOBAL_CTRL split, exotic encodings and perf metrics."""

from __future__ import annotations

import pytest
from vpmu_intel_arch.events import (
    ARCH_EVENTS,
    EVTSEL_CMASK,
    EVTSEL_EDGE,
    EVTSEL_EN,
    EVTSEL_INT,
    EVTSEL_INV,
    EVTSEL_OS,
    EVTSEL_USR,
)
from vpmu_intel_arch.models import IntelCpuModel
from vpmu_intel_arch.pmu import (
    MSR_A_PMC0,
    MSR_FIXED_CTR0,
    MSR_FIXED_CTR_CTRL,
    MSR_GLOBAL_CTRL,
    MSR_GLOBAL_OVF_CTRL,
    MSR_GLOBAL_STATUS,
    MSR_PERF_METRICS,
    MSR_PERFEVTSEL0,
    MSR_PMC0,
)

from vpmu_core.events import EventKind, Work
from vpmu_core.hv.config import GuestPmuConfig
from vpmu_core.hw.pmc import events_until_overflow

N, B = 1_000_003, 77_777
INST, BR = 0x00C0, 0x00C4
BOTH = EVTSEL_USR | EVTSEL_OS | EVTSEL_EN


def _program(pmu, cpl_bits: int = BOTH) -> None:  # noqa: ANN001
    pmu.wrmsr(MSR_PERFEVTSEL0, INST | cpl_bits)
    pmu.wrmsr(MSR_PERFEVTSEL0 + 1, BR | cpl_bits)
    fixed_bits = (1 if cpl_bits & EVTSEL_OS else 0) | (2 if cpl_bits & EVTSEL_USR else 0)
    pmu.wrmsr(MSR_FIXED_CTR_CTRL, fixed_bits | fixed_bits << 4)
    pmu.wrmsr(MSR_GLOBAL_CTRL, 0b11 | 0b11 << 32)


def test_exact_counts_gp_and_fixed(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(None)
    _program(pmu)
    work = Work(instructions=N, branches=B, cpl=0)
    assert pmu.accrue(work.counts, 0, False) is None
    assert pmu.rdmsr(MSR_PMC0) == N
    assert pmu.rdmsr(MSR_PMC0 + 1) == B
    assert pmu.rdmsr(MSR_FIXED_CTR0) == N
    assert pmu.rdmsr(MSR_FIXED_CTR0 + 1) == work.cycles


@pytest.mark.parametrize("cpl", [0, 3])
def test_cpl_filters(model: IntelCpuModel, cpl: int) -> None:
    for bits, kernel_counts, user_counts in (
        (EVTSEL_OS | EVTSEL_EN, True, False),
        (EVTSEL_USR | EVTSEL_EN, False, True),
    ):
        pmu = model.make_pmu(None)
        _program(pmu, bits)
        pmu.accrue(Work(instructions=N, branches=B, cpl=cpl).counts, cpl, False)
        expect = kernel_counts if cpl == 0 else user_counts
        assert pmu.rdmsr(MSR_PMC0) == (N if expect else 0)
        assert pmu.rdmsr(MSR_FIXED_CTR0) == (N if expect else 0)


def test_global_ctrl_and_en_both_needed(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(None)
    pmu.wrmsr(MSR_PERFEVTSEL0, INST | EVTSEL_USR | EVTSEL_OS)  # no EN
    pmu.wrmsr(MSR_PERFEVTSEL0 + 1, INST | BOTH)
    pmu.wrmsr(MSR_GLOBAL_CTRL, 0b01)  # counter 1's global bit clear
    pmu.accrue(Work(instructions=N).counts, 0, False)
    assert pmu.rdmsr(MSR_PMC0) == 0 and pmu.rdmsr(MSR_PMC0 + 1) == 0


def test_every_enumerated_architectural_event_counts(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(None)
    work = Work(instructions=N, branches=B, branch_misses=11, llc_references=13, llc_misses=5, topdown_slots=4 * N)
    for enc, kind in ARCH_EVENTS[: model.data.arch_events_len]:
        pmu.wrmsr(MSR_A_PMC0, 0)
        pmu.wrmsr(MSR_PERFEVTSEL0, enc | BOTH)
        pmu.accrue(work.counts, 0, False)
        assert pmu.rdmsr(MSR_PMC0) == work.count(kind), hex(enc)


def test_guest_hidden_event_still_counts_on_host_support(model: IntelCpuModel) -> None:
    """KVM does not check CPUID.0AH:EBX when programming: the host's events count."""
    pmu = model.make_pmu(GuestPmuConfig())
    pmu.wrmsr(MSR_PERFEVTSEL0, 0x412E | BOTH)  # LLC misses
    pmu.accrue(Work(instructions=10, llc_misses=3).counts, 0, False)
    assert pmu.rdmsr(MSR_PMC0) == 3


@pytest.mark.parametrize("bits", [EVTSEL_EDGE, EVTSEL_INV, 2 << 24])
def test_edge_inv_cmask_are_exotic_and_count_nothing(model: IntelCpuModel, bits: int) -> None:
    assert bits & (EVTSEL_EDGE | EVTSEL_INV | EVTSEL_CMASK)
    pmu = model.make_pmu(None)
    pmu.wrmsr(MSR_PERFEVTSEL0, INST | BOTH | bits)
    assert pmu.gp[0].exotic
    pmu.accrue(Work(instructions=N).counts, 0, False)
    assert pmu.rdmsr(MSR_PMC0) == 0


@pytest.mark.parametrize("n", [1, 2, 1000])
@pytest.mark.parametrize("alias", [MSR_PMC0, MSR_A_PMC0])
def test_overflow_lands_on_one_sets_status_and_pmi_only_with_int(model: IntelCpuModel, n: int, alias: int) -> None:
    for int_en in (False, True):
        pmu = model.make_pmu(GuestPmuConfig())
        width_mask = pmu.gp[0].mask
        pmu.wrmsr(alias, (-(n - 1)) & (width_mask if alias == MSR_A_PMC0 else 0xFFFFFFFF))
        assert events_until_overflow(pmu.rdmsr(MSR_PMC0), width_mask) == n - 1 or n == 1
        pmu.wrmsr(MSR_PERFEVTSEL0, INST | BOTH | (EVTSEL_INT if int_en else 0))
        pmu.wrmsr(MSR_GLOBAL_CTRL, 1)
        ov = pmu.accrue(Work(instructions=n).counts, 0, False)
        assert pmu.rdmsr(MSR_PMC0) == 1
        if n == 1:  # preset 0: one event -> 1, no wrap
            assert ov is None
            continue
        assert ov is not None and [(p.idx, o) for p, o in ov] == [(0, 1)]
        assert pmu.raise_overflow(ov[0][0]) is int_en
        assert pmu.rdmsr(MSR_GLOBAL_STATUS) == 1
        pmu.wrmsr(MSR_GLOBAL_OVF_CTRL, 1)
        assert pmu.rdmsr(MSR_GLOBAL_STATUS) == 0


def test_fixed_overflow_status_bit_and_pmi_bit(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(None)
    pmu.wrmsr(MSR_FIXED_CTR0, pmu.fixed[0].mask)  # one event to wrap
    pmu.wrmsr(MSR_FIXED_CTR_CTRL, 0x3)  # no PMI bit
    pmu.wrmsr(MSR_GLOBAL_CTRL, 1 << 32)
    ov = pmu.accrue(Work(instructions=2).counts, 0, False)
    assert ov is not None and ov[0][0] is pmu.fixed[0] and ov[0][1] == 1
    assert pmu.raise_overflow(pmu.fixed[0]) is False
    assert pmu.global_status == 1 << 32
    pmu.wrmsr(MSR_FIXED_CTR_CTRL, 0xB)
    assert pmu.raise_overflow(pmu.fixed[0]) is True


def test_write_to_running_counter_takes_effect_at_once(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(None)
    _program(pmu)
    pmu.accrue(Work(instructions=10).counts, 0, False)
    pmu.wrmsr(MSR_A_PMC0, 1000)
    pmu.accrue(Work(instructions=5).counts, 0, False)
    assert pmu.rdmsr(MSR_PMC0) == 1005


def test_host_guest_split_through_entry_loads(model: IntelCpuModel) -> None:
    """count_host follows the live GLOBAL_CTRL, count_guest the VM-entry loaded value."""
    pmu = model.make_pmu(None)
    pmu.wrmsr(MSR_PERFEVTSEL0, INST | BOTH)
    pmu.wrmsr(MSR_PERFEVTSEL0 + 1, INST | BOTH)
    pmu.wrmsr(MSR_GLOBAL_CTRL, 0b01)  # host: counter 0 only
    pmu.set_entry_loads({MSR_GLOBAL_CTRL: 0b10})  # guest: counter 1 only
    pmu.accrue(Work(instructions=7).counts, 0, False)
    pmu.accrue(Work(instructions=100).counts, 0, True)
    assert (pmu.rdmsr(MSR_PMC0), pmu.rdmsr(MSR_PMC0 + 1)) == (7, 100)
    # without entry loads the guest runs under the host value
    pmu.set_entry_loads({})
    pmu.accrue(Work(instructions=1000).counts, 0, True)
    assert (pmu.rdmsr(MSR_PMC0), pmu.rdmsr(MSR_PMC0 + 1)) == (1007, 100)


def test_guest_visible_pmu_counts_both_flags_equal(model: IntelCpuModel) -> None:
    pmu = model.make_pmu(GuestPmuConfig())
    pmu.wrmsr(MSR_PERFEVTSEL0, INST | BOTH)
    pmu.wrmsr(MSR_GLOBAL_CTRL, 0)
    assert (pmu.gp[0].count_host, pmu.gp[0].count_guest) == (False, False)
    pmu.wrmsr(MSR_GLOBAL_CTRL, 1)
    assert (pmu.gp[0].count_host, pmu.gp[0].count_guest) == (True, True)


def test_perf_metrics_fractions_of_slots(model: IntelCpuModel) -> None:
    if not model.data.perf_metrics:
        pytest.skip("no perf metrics on this model")
    pmu = model.make_pmu(None)
    parts = {"topdown_retiring": 400, "topdown_bad_spec": 100, "topdown_fe_bound": 200, "topdown_be_bound": 300}
    slots = sum(parts.values())
    work = Work(instructions=100, topdown_slots=slots, **parts)
    pmu.wrmsr(MSR_FIXED_CTR_CTRL, 0x3 << 12)
    pmu.wrmsr(MSR_GLOBAL_CTRL, 1 << 35)  # SLOTS without EN_PERF_METRICS: no breakdown
    pmu.accrue(work.counts, 0, False)
    assert pmu.rdmsr(MSR_FIXED_CTR0 + 3) == slots
    assert pmu.rdmsr(MSR_PERF_METRICS) == 0
    pmu.wrmsr(MSR_GLOBAL_CTRL, 1 << 35 | 1 << 48)
    pmu.accrue(work.counts, 0, False)
    value = pmu.rdmsr(MSR_PERF_METRICS)
    order = ("topdown_retiring", "topdown_bad_spec", "topdown_fe_bound", "topdown_be_bound")
    for k, name in enumerate(order):
        assert value >> (8 * k) & 0xFF == parts[name] * 0xFF // slots
    pmu.wrmsr(MSR_PERF_METRICS, 0)  # Linux restarts metrics with a 0 write
    assert pmu.rdmsr(MSR_PERF_METRICS) == 0
    assert EventKind.TOPDOWN_SLOTS == 7
