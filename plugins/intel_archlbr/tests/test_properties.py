"""Hypothesis over LBR_CTL, DEBUGCTL and LBR_SELECT values, and the component 15 bytes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lbr_helpers import ARCH_CPU, DEBUGCTL, LBR_CTL, LBR_SELECT, make_host
from vpmu_intel_archlbr.debugctl import HOST_VALID
from vpmu_intel_archlbr.xsave import ArchLbrComponent

from vpmu_core import GuestFault

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def legacy_states() -> tuple[Any, Any]:
    fac = make_host("intel/icelake", "lbr").facilities["lbr"]
    return fac.make_state(guest=True), fac.make_state(guest=False)


@pytest.fixture(scope="module")
def arch_states() -> tuple[Any, Any]:
    fac = make_host(ARCH_CPU, "arch_lbr").facilities["arch_lbr"]
    return fac.make_state(guest=True), fac.make_state(guest=False)


def outcome(state: Any, msr: int, value: int) -> int | None:
    """The value read back after the write, or None if the write was #GP (and changed nothing)."""
    before = state.rdmsr(msr)
    try:
        state.wrmsr(msr, value)
    except GuestFault as e:
        assert e.vector == 13
        assert state.rdmsr(msr) == before
        return None
    return state.rdmsr(msr)


@SETTINGS
@given(value=st.one_of(U64, st.integers(min_value=0, max_value=0x7F000F)))
def test_lbr_ctl_reserved_bits_gp_else_read_back(arch_states: tuple[Any, Any], value: int) -> None:
    for state in arch_states:
        got = outcome(state, LBR_CTL, value)
        if value & ~0x7F000F:
            assert got is None
        else:
            assert got == value
            assert state.active == bool(value & 1)


@SETTINGS
@given(value=st.one_of(U64, st.integers(min_value=0, max_value=0x7FFF)))
def test_debugctl_guest_legacy(legacy_states: tuple[Any, Any], value: int) -> None:
    guest, _ = legacy_states
    got = outcome(guest, DEBUGCTL, value)
    if value & ~(1 | 1 << 1 | 1 << 11):
        assert got is None
    else:
        assert got == value & (1 | 1 << 11)  # BTF dropped
        assert guest.active == bool(value & 1)


@SETTINGS
@given(value=st.one_of(U64, st.integers(min_value=0, max_value=0x7FFF)))
def test_debugctl_host_legacy(legacy_states: tuple[Any, Any], value: int) -> None:
    _, host = legacy_states
    got = outcome(host, DEBUGCTL, value)
    assert got == (None if value & ~HOST_VALID else value)


@SETTINGS
@given(value=st.one_of(U64, st.integers(min_value=0, max_value=0x7FFF)))
def test_debugctl_arch_has_no_lbr_bit(arch_states: tuple[Any, Any], value: int) -> None:
    guest, host = arch_states
    got = outcome(guest, DEBUGCTL, value)
    assert got == (None if value & ~(1 | 1 << 1 | 1 << 11) else value & 1 << 11)
    got = outcome(host, DEBUGCTL, value)
    assert got == (None if value & ~HOST_VALID else value & ~1)


@SETTINGS
@given(value=st.one_of(U64, st.integers(min_value=0, max_value=0x7FF)))
def test_lbr_select_valid_mask(legacy_states: tuple[Any, Any], value: int) -> None:
    for state in legacy_states:
        got = outcome(state, LBR_SELECT, value)
        assert got == (None if value & ~0x3FF else value)


@SETTINGS
@given(
    header=st.tuples(U64, st.sampled_from([8, 16, 24, 32]), U64, U64, U64),
    entries=st.lists(st.tuples(U64, U64, U64), min_size=32, max_size=32),
)
def test_component_bytes_round_trip(header: tuple[int, ...], entries: list[tuple[int, int, int]]) -> None:
    comp = ArchLbrComponent(*header, entries=tuple(entries))
    data = comp.pack()
    assert len(data) == 808
    assert ArchLbrComponent.unpack(data, 32) == comp
