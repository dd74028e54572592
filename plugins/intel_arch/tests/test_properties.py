"""Property tests over random values: reserved bits, sign extension, width, RDPMC."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vpmu_intel_arch.models import make_icelake, make_sapphirerapids, make_skylake
from vpmu_intel_arch.pmu import MSR_A_PMC0, MSR_PERFEVTSEL0, MSR_PMC0

from vpmu_core.errors import GuestFault
from vpmu_core.hv.config import GuestPmuConfig
from vpmu_core.hw.pmc import sign_extend

MODELS = [make_skylake({}), make_skylake({"smt": False}), make_icelake({}), make_sapphirerapids({})]
U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
# KVM intel_pmu_refresh: pmu->reserved_bits = 0xffffffff00200000 (no TSX exposed)
KVM_EVTSEL_RSVD = 0xFFFFFFFF00200000


@settings(max_examples=300, deadline=None)
@given(m=st.sampled_from(MODELS), value=U64)
def test_guest_evtsel_gp_iff_reserved_bit(m, value: int) -> None:  # noqa: ANN001
    pmu = m.make_pmu(GuestPmuConfig())
    try:
        pmu.wrmsr(MSR_PERFEVTSEL0, value)
        faulted = False
    except GuestFault:
        faulted = True
    assert faulted == bool(value & KVM_EVTSEL_RSVD)
    if not faulted:
        assert pmu.rdmsr(MSR_PERFEVTSEL0) == value


@settings(max_examples=300, deadline=None)
@given(m=st.sampled_from(MODELS), value=U64)
def test_legacy_write_sign_extends_low_32(m, value: int) -> None:  # noqa: ANN001
    pmu = m.make_pmu(GuestPmuConfig())
    pmu.wrmsr(MSR_PMC0 + 1, value)
    width = pmu.gp[1].width
    low = value & 0xFFFFFFFF
    expect = low | (((1 << width) - 1) ^ 0xFFFFFFFF if low >> 31 else 0)
    assert pmu.rdmsr(MSR_PMC0 + 1) == expect == sign_extend(value, 32, width)


@settings(max_examples=300, deadline=None)
@given(m=st.sampled_from(MODELS), value=U64)
def test_full_width_write_gp_iff_above_width(m, value: int) -> None:  # noqa: ANN001
    pmu = m.make_pmu(GuestPmuConfig())
    width = pmu.gp[0].width
    before = pmu.rdmsr(MSR_PMC0)
    try:
        pmu.wrmsr(MSR_A_PMC0, value)
        assert value >> width == 0
        assert pmu.rdmsr(MSR_PMC0) == value == pmu.rdmsr(MSR_A_PMC0)
    except GuestFault:
        assert value >> width
        assert pmu.rdmsr(MSR_PMC0) == before  # a faulting write has no effect


@settings(max_examples=400, deadline=None)
@given(
    m=st.sampled_from(MODELS),
    gp_n=st.integers(0, 8),
    fx_n=st.integers(0, 4),
    ecx=st.one_of(st.integers(0, (1 << 32) - 1), st.integers(0, 9), st.integers(0, 9).map(lambda i: 1 << 30 | i)),
)
def test_rdpmc_encodings(m, gp_n: int, fx_n: int, ecx: int) -> None:  # noqa: ANN001
    pmu = m.make_pmu(GuestPmuConfig(gp_counters=gp_n, fixed_counters=fx_n))
    for p in pmu.pmcs:
        p.value = (0xABCDEF << 24 | p.idx) & p.mask
    idx = ecx & 0xFFFF
    kind = ecx >> 16
    if kind == 0 and idx < len(pmu.gp):
        expect: int | None = pmu.gp[idx].value
    elif kind == 0x4000 and idx < len(pmu.fixed):
        expect = pmu.fixed[idx].value
    else:
        expect = None  # fast-read bit 31, unknown types, out of range: #GP (KVM)
    if expect is None:
        with pytest.raises(GuestFault):
            pmu.rdpmc(ecx)
    else:
        v = pmu.rdpmc(ecx)
        assert v == expect and v >> 48 == 0
