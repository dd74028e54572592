"""Declarative registers: reserved-bit policies, read-only, write-1-to-clear, aliases."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpmu_core.errors import GuestFault
from vpmu_core.hw.msr import Register
from vpmu_core.testing.toy import ToyPmu

U64 = st.integers(0, (1 << 64) - 1)
MASK = 0x0000_00FF_0000_FFFF


@given(U64)
def test_gp_policy_faults_iff_a_reserved_bit_is_set(v):
    r = Register("R", writable=MASK)
    if v & ~MASK:
        with pytest.raises(GuestFault):
            r.write(v)
        assert r.value == 0, "a faulting write has no effect"
    else:
        r.write(v)
        assert r.read() == v


@given(U64)
def test_drop_policy_keeps_only_writable_bits(v):
    r = Register("R", writable=MASK, reserved="drop")
    r.write(v)
    assert r.read() == v & MASK


def test_read_only_write_1_to_clear_and_host_writes():
    status = Register("STATUS", writable=0xF, read_only=True)
    clr = Register("STATUS_CLR", writable=0xF, reads_as=0, write_1_to_clear=status)
    with pytest.raises(GuestFault):
        status.write(1)
    status.write(0b1011, host_initiated=True)
    clr.write(0b0011)
    assert status.value == 0b1000 and clr.read() == 0
    with pytest.raises(GuestFault):
        clr.write(0x10)


def test_on_write_side_effect_and_aliases_share_storage():
    seen = []
    pmu = ToyPmu()
    reg = pmu.add_register(
        (0x900, 0x901), Register("ALIASED", writable=0xFF, on_write=lambda o, n: seen.append((o, n)))
    )
    pmu.wrmsr(0x900, 5)
    assert pmu.rdmsr(0x901) == 5 and reg.value == 5 and seen == [(0, 5)]
    pmu.wrmsr(0x901, 5)
    assert seen == [(0, 5)], "no side effect when the value does not change"


def test_toy_global_registers_follow_their_declarations():
    pmu = ToyPmu()
    assert pmu.rdmsr(0x300) == 0b1111  # reset: all GP counters enabled
    with pytest.raises(GuestFault):
        pmu.wrmsr(0x301, 1)  # GLOBAL_STATUS read-only
    pmu.host_initiated = True
    pmu.wrmsr(0x301, 0b11)
    pmu.host_initiated = False
    pmu.wrmsr(0x302, 0b01)
    assert pmu.rdmsr(0x301) == 0b10


def test_batched_refresh_decodes_once_with_the_union_of_changes():
    """A reschedule's register writes: one decode at the end, observers told once."""
    from vpmu_core.testing.toy import EVTSEL, ToyPmu

    pmu = ToyPmu()
    seen: list[int] = []
    pmu.control_listeners.append(seen.append)
    decodes = 0
    real = pmu._decode

    def counting_decode() -> None:
        nonlocal decodes
        decodes += 1
        real()

    pmu._decode = counting_decode  # type: ignore[method-assign]
    with pmu.batched_refresh():
        pmu.wrmsr(EVTSEL, 0x4300C0)
        with pmu.batched_refresh():  # nested: still one decode at the outer end
            pmu.wrmsr(EVTSEL + 2, 0x4300C4)
        assert decodes == 0 and seen == [] and not pmu.gp[0].local_en
    assert decodes == 1 and seen == [0b101]
    assert pmu.gp[0].local_en and pmu.gp[2].local_en and not pmu.gp[1].local_en
    pmu.wrmsr(EVTSEL + 1, 0x4300C0)  # outside a batch: at once
    assert decodes == 2 and seen == [0b101, 0b10]
