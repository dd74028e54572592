"""Register rules of the AMD PMU model, physical and guest-visible."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from vpmu_core.errors import GuestFault
from vpmu_core.events import EventKind, Work
from vpmu_core.hv.config import GuestPmuConfig

from vpmu_amd_perfmon import eventsel as es
from vpmu_amd_perfmon.models import make_model
from vpmu_amd_perfmon.pmu import (
    F15H_PERF_CTL0,
    F15H_PERF_CTR0,
    GLOBAL_CTL,
    GLOBAL_STATUS,
    GLOBAL_STATUS_CLR,
    GLOBAL_STATUS_SET,
    K7_EVNTSEL0,
    K7_PERFCTR0,
    AmdPmu,
)

INSN = 0x0C0
BR = 0x0C2
CNT = es.USR | es.OS | es.EN
MASK48 = (1 << 48) - 1
u64 = st.integers(min_value=0, max_value=2**64 - 1)


def ctl(pmu: AmdPmu, i: int) -> int:
    return F15H_PERF_CTL0 + 2 * i if pmu.ext_core else K7_EVNTSEL0 + i


def ctr(pmu: AmdPmu, i: int) -> int:
    return F15H_PERF_CTR0 + 2 * i if pmu.ext_core else K7_PERFCTR0 + i


def zen4_pmu(guest: bool = False) -> AmdPmu:
    m = make_model("amd/zen4")
    return m.make_pmu(GuestPmuConfig() if guest else None)


# ---- MSR map ---------------------------------------------------------------------------------
def test_msr_map_per_model() -> None:
    k8 = make_model("amd/k8").make_pmu()
    assert k8.msr_indexes == list(range(0xC0010000, 0xC0010008))
    zen2 = make_model("amd/zen2").make_pmu()
    assert set(zen2.msr_indexes) == set(range(0xC0010000, 0xC0010008)) | set(range(0xC0010200, 0xC001020C))
    zen4 = make_model("amd/zen4").make_pmu()
    assert set(zen4.msr_indexes) == set(zen2.msr_indexes) | {
        GLOBAL_STATUS,
        GLOBAL_CTL,
        GLOBAL_STATUS_CLR,
        GLOBAL_STATUS_SET,
    }
    assert (k8.version, zen2.version, zen4.version) == (1, 1, 2)


@pytest.mark.parametrize("name", ["amd/k8", "amd/zen2"])
def test_no_global_registers_without_perfmon_v2(name: str) -> None:
    pmu = make_model(name).make_pmu()
    assert pmu.global_msrs() == {}
    for msr in (GLOBAL_STATUS, GLOBAL_CTL, GLOBAL_STATUS_CLR, GLOBAL_STATUS_SET):
        with pytest.raises(GuestFault):
            pmu.rdmsr(msr)


def test_k8_has_no_extension_msrs() -> None:
    pmu = make_model("amd/k8").make_pmu()
    for msr in (F15H_PERF_CTL0, F15H_PERF_CTR0, F15H_PERF_CTL0 + 10):
        with pytest.raises(GuestFault):
            pmu.wrmsr(msr, 0)


# ---- PerfEvtSel reserved bits -----------------------------------------------------------------
@given(value=u64)
def test_guest_selector_drops_kvm_reserved_bits(value: int) -> None:
    pmu = zen4_pmu(guest=True)
    pmu.wrmsr(F15H_PERF_CTL0, value)  # never #GP (KVM svm/pmu.c)
    got = pmu.rdmsr(F15H_PERF_CTL0)
    assert got == value & ~es.KVM_GUEST_RESERVED & (2**64 - 1)
    assert not got & (es.HOST_ONLY | es.GUEST_ONLY)
    assert pmu.rdmsr(K7_EVNTSEL0) == got  # alias


@given(value=u64)
def test_physical_selector_keeps_host_guest_bits(value: int) -> None:
    pmu = zen4_pmu()
    pmu.wrmsr(F15H_PERF_CTL0 + 2, value)
    got = pmu.rdmsr(F15H_PERF_CTL0 + 2)
    assert got == value & es.HW_VALID
    assert got & (es.HOST_ONLY | es.GUEST_ONLY) == value & (es.HOST_ONLY | es.GUEST_ONLY)
    assert not got & ((1 << 19) | (1 << 21) | (0xF << 36) | (2**64 - 2**42))


@given(value=u64)
def test_decode_follows_the_selector(value: int) -> None:
    pmu = zen4_pmu(guest=True)
    pmu.wrmsr(F15H_PERF_CTL0, value)
    p = pmu.gp[0]
    sel = pmu.rdmsr(F15H_PERF_CTL0)
    assert p.config == sel
    assert (p.usr, p.os, p.int_en, p.local_en) == (
        bool(value & es.USR),
        bool(value & es.OS),
        bool(value & es.INT),
        bool(value & es.EN),
    )
    assert p.exotic == bool(value & (es.EDGE | es.INV | es.CMASK))
    assert p.event == es.decode_kind(sel, zen=True)


def test_twelve_bit_event_select() -> None:
    pmu = zen4_pmu()
    # event 0x1C0 is not 0x0C0: bits 35:32 are part of the event
    pmu.wrmsr(F15H_PERF_CTL0, es.encode(0x1C0) | CNT)
    assert es.event_select(pmu.rdmsr(F15H_PERF_CTL0)) == 0x1C0
    assert pmu.gp[0].event is None
    pmu.wrmsr(F15H_PERF_CTL0, es.encode(0x0C0) | CNT)
    assert pmu.gp[0].event == EventKind.INSTRUCTIONS


def test_event_encodings_per_family() -> None:
    zen, k8 = make_model("amd/zen4").make_pmu(), make_model("amd/k8").make_pmu()
    for enc, kind in [(0x0076, "CYCLES"), (0x00C0, "INSTRUCTIONS"), (0x00C2, "BRANCHES"), (0x00C3, "BRANCH_MISSES")]:
        for pmu in (zen, k8):
            pmu.wrmsr(ctl(pmu, 0), es.encode(enc & 0xFF, enc >> 8) | CNT)
            assert pmu.gp[0].event == EventKind[kind]
    zen.wrmsr(ctl(zen, 0), es.encode(0x60, 0xFF) | CNT)
    assert zen.gp[0].event == EventKind.LLC_REFERENCES
    zen.wrmsr(ctl(zen, 0), es.encode(0x64, 0x09) | CNT)
    assert zen.gp[0].event == EventKind.LLC_MISSES
    k8.wrmsr(ctl(k8, 0), es.encode(0x7D, 0x07) | CNT)
    assert k8.gp[0].event == EventKind.LLC_REFERENCES
    k8.wrmsr(ctl(k8, 0), es.encode(0x7E, 0x07) | CNT)
    assert k8.gp[0].event == EventKind.LLC_MISSES


# ---- K7 aliasing -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["amd/zen2", "amd/zen4"])
@pytest.mark.parametrize("i", range(4))
def test_k7_msrs_alias_counters_0_to_3(name: str, i: int) -> None:
    pmu = make_model(name).make_pmu()
    pmu.wrmsr(K7_PERFCTR0 + i, 0x1234 + i)
    assert pmu.rdmsr(F15H_PERF_CTR0 + 2 * i) == 0x1234 + i
    pmu.wrmsr(F15H_PERF_CTR0 + 2 * i, 0xABCD)
    assert pmu.rdmsr(K7_PERFCTR0 + i) == 0xABCD
    pmu.wrmsr(K7_EVNTSEL0 + i, es.encode(INSN) | CNT)
    assert pmu.rdmsr(F15H_PERF_CTL0 + 2 * i) == es.encode(INSN) | CNT
    pmu.wrmsr(F15H_PERF_CTL0 + 2 * i, es.encode(BR) | es.USR)
    assert pmu.rdmsr(K7_EVNTSEL0 + i) == es.encode(BR) | es.USR


def test_counters_4_and_5_have_no_k7_alias() -> None:
    pmu = make_model("amd/zen4").make_pmu()
    assert pmu.counter_msrs(pmu.gp[4]) == (F15H_PERF_CTR0 + 8,)
    assert pmu.counter_msrs(pmu.gp[1]) == (F15H_PERF_CTR0 + 2, K7_PERFCTR0 + 1)


@pytest.mark.parametrize("i", range(4))
def test_global_ctl_gates_the_k7_aliases(i: int) -> None:
    pmu = zen4_pmu()
    assert pmu.rdmsr(GLOBAL_CTL) == 0x3F  # reset: all counters enabled
    pmu.wrmsr(K7_EVNTSEL0 + i, es.encode(INSN) | CNT)
    pmu.wrmsr(GLOBAL_CTL, 0x3F & ~(1 << i))
    pmu.accrue(Work(instructions=100).counts, 0, False)
    assert pmu.rdmsr(K7_PERFCTR0 + i) == 0
    pmu.wrmsr(GLOBAL_CTL, 1 << i)
    pmu.accrue(Work(instructions=7).counts, 0, False)
    assert pmu.rdmsr(K7_PERFCTR0 + i) == 7


def test_global_ctl_reserved_bits_dropped() -> None:
    for guest in (False, True):
        pmu = zen4_pmu(guest)
        pmu.wrmsr(GLOBAL_CTL, 2**64 - 1)
        assert pmu.rdmsr(GLOBAL_CTL) == 0x3F


# ---- exact counts ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["amd/k8", "amd/zen2", "amd/zen4"])
@pytest.mark.parametrize("guest", [False, True])
def test_exact_counts(name: str, guest: bool) -> None:
    m = make_model(name)
    pmu = m.make_pmu(GuestPmuConfig() if guest else None)
    pmu.wrmsr(ctl(pmu, 0), es.encode(INSN) | CNT)
    pmu.wrmsr(ctl(pmu, 1), es.encode(BR) | es.USR | es.EN)  # user only
    pmu.wrmsr(ctl(pmu, 2), es.encode(BR) | es.OS | es.EN)  # kernel only
    pmu.wrmsr(ctl(pmu, 3), es.encode(0x76) | CNT)
    n, b = 123_457, 9_876
    pmu.accrue(Work(instructions=n, branches=b, cpl=3).counts, 3, False)
    pmu.accrue(Work(instructions=n, branches=b, cycles=5 * n).counts, 0, False)
    assert pmu.rdmsr(ctr(pmu, 0)) == 2 * n
    assert pmu.rdmsr(ctr(pmu, 1)) == b
    assert pmu.rdmsr(ctr(pmu, 2)) == b
    assert pmu.rdmsr(ctr(pmu, 3)) == 6 * n
    pmu.wrmsr(ctl(pmu, 0), es.encode(INSN) | es.USR | es.OS)  # EN clear
    pmu.accrue(Work(instructions=n).counts, 0, False)
    assert pmu.rdmsr(ctr(pmu, 0)) == 2 * n


@pytest.mark.parametrize("bits", [es.EDGE, es.INV, 1 << 24])
def test_edge_inv_cmask_are_exotic_and_count_nothing(bits: int) -> None:
    pmu = zen4_pmu()
    pmu.wrmsr(F15H_PERF_CTL0, es.encode(INSN) | CNT | bits)
    assert pmu.gp[0].exotic
    pmu.accrue(Work(instructions=50).counts, 0, False)
    assert pmu.rdmsr(F15H_PERF_CTR0) == 0


def test_counter_writes_are_48_bit() -> None:
    for guest in (False, True):
        pmu = zen4_pmu(guest)
        pmu.wrmsr(F15H_PERF_CTR0, 2**64 - 1)
        assert pmu.rdmsr(F15H_PERF_CTR0) == MASK48
        pmu.wrmsr(K7_PERFCTR0, 0xFFFF_0000_0000_0005)  # no sign extension, upper bits dropped
        assert pmu.rdmsr(F15H_PERF_CTR0) == 5


def test_control_writes_notify_only_changed_counters() -> None:
    pmu = zen4_pmu(guest=True)
    seen: list[int] = []
    pmu.control_listeners.append(seen.append)
    pmu.wrmsr(F15H_PERF_CTL0 + 4, es.encode(INSN) | CNT)
    pmu.wrmsr(K7_EVNTSEL0 + 2, es.encode(INSN) | CNT)  # same value through the alias
    pmu.wrmsr(GLOBAL_CTL, 0x3F & ~0b11)
    pmu.wrmsr(GLOBAL_CTL, 0x3F & ~0b11)
    assert seen == [1 << 2, 0b11]


# ---- overflow ----------------------------------------------------------------------------------
def test_overflow_with_perfmon_v2_sets_status() -> None:
    pmu = zen4_pmu()
    pmu.wrmsr(F15H_PERF_CTR0 + 6, MASK48 - 9)
    pmu.wrmsr(F15H_PERF_CTL0 + 6, es.encode(INSN) | CNT | es.INT)
    pmu.wrmsr(F15H_PERF_CTL0 + 8, es.encode(INSN) | CNT)
    pmu.wrmsr(F15H_PERF_CTR0 + 8, MASK48)
    ovf = pmu.accrue(Work(instructions=15).counts, 0, False)
    assert ovf is not None
    got = {p.idx: over for p, over in ovf}
    assert got == {3: 5, 4: 14}
    assert pmu.rdmsr(F15H_PERF_CTR0 + 6) == 5
    assert pmu.raise_overflow(pmu.gp[3]) is True
    assert pmu.raise_overflow(pmu.gp[4]) is False  # no INT: status only, no PMI
    assert pmu.rdmsr(GLOBAL_STATUS) == 0b11000
    pmu.wrmsr(GLOBAL_STATUS, 0)  # read-only: ignored
    assert pmu.rdmsr(GLOBAL_STATUS) == 0b11000
    pmu.wrmsr(GLOBAL_STATUS_CLR, 1 << 3)
    assert pmu.rdmsr(GLOBAL_STATUS) == 1 << 4
    assert pmu.rdmsr(GLOBAL_STATUS_CLR) == 0 and pmu.rdmsr(GLOBAL_STATUS_SET) == 0
    pmu.wrmsr(GLOBAL_STATUS_SET, 2**64 - 1)  # reserved bits ignored
    assert pmu.rdmsr(GLOBAL_STATUS) == 0x3F


@pytest.mark.parametrize("name", ["amd/k8", "amd/zen2"])
def test_overflow_without_perfmon_v2_is_only_the_wrap(name: str) -> None:
    pmu = make_model(name).make_pmu()
    pmu.wrmsr(ctr(pmu, 1), MASK48 - 1)
    pmu.wrmsr(ctl(pmu, 1), es.encode(INSN) | CNT | es.INT)
    ovf = pmu.accrue(Work(instructions=3).counts, 0, False)
    assert ovf is not None and [(p.idx, o) for p, o in ovf] == [(1, 1)]
    assert pmu.rdmsr(ctr(pmu, 1)) == 1  # wrapped: bit 47 clear again
    assert pmu.raise_overflow(pmu.gp[1]) is True
    assert pmu.global_status == 0


def test_guest_status_kvm_rules() -> None:
    pmu = zen4_pmu(guest=True)
    pmu.wrmsr(GLOBAL_STATUS_SET, 0b101)
    assert pmu.rdmsr(GLOBAL_STATUS) == 0b101
    pmu.wrmsr(GLOBAL_STATUS, 0)  # guest write ignored
    assert pmu.rdmsr(GLOBAL_STATUS) == 0b101
    pmu.restore_snapshot({GLOBAL_STATUS: 0b10})  # host-initiated write allowed
    assert pmu.rdmsr(GLOBAL_STATUS) == 0b10
    pmu.restore_snapshot({GLOBAL_STATUS_CLR: 0b10})  # host-initiated CLR ignored by KVM
    assert pmu.rdmsr(GLOBAL_STATUS) == 0b10
    pmu.wrmsr(GLOBAL_STATUS_CLR, 0b10)
    assert pmu.rdmsr(GLOBAL_STATUS) == 0


def test_snapshot_round_trip() -> None:
    a, b = zen4_pmu(guest=True), zen4_pmu(guest=True)
    a.wrmsr(F15H_PERF_CTL0 + 10, es.encode(BR) | CNT)
    a.wrmsr(F15H_PERF_CTR0 + 10, 77)
    a.wrmsr(GLOBAL_CTL, 0b100000)
    a.wrmsr(GLOBAL_STATUS_SET, 0b1)
    snap = a.snapshot()
    assert K7_EVNTSEL0 not in snap and GLOBAL_STATUS_CLR not in snap
    b.restore_snapshot(snap)
    assert b.snapshot() == snap


# ---- HostOnly / GuestOnly --------------------------------------------------------------------
HO, GO = es.HOST_ONLY, es.GUEST_ONLY


def _hg_pmu(svme: bool) -> AmdPmu:
    pmu = zen4_pmu()
    pmu.virtualization_enabled = svme
    for i, bits in enumerate((0, HO, GO, HO | GO)):
        pmu.wrmsr(F15H_PERF_CTL0 + 2 * i, es.encode(INSN) | CNT | bits)
    return pmu


def _interleave(pmu: AmdPmu) -> tuple[int, int]:
    host = guest = 0
    for k, (n, in_guest) in enumerate([(100, False), (1000, True), (7, False), (50, True), (3, False)]):
        pmu.set_guest_mode(in_guest)
        pmu.accrue(Work(instructions=n, cpl=3 if k % 2 else 0).counts, 3 if k % 2 else 0, in_guest)
        if in_guest:
            guest += n
        else:
            host += n
    return host, guest


def test_host_guest_only_with_svme() -> None:
    pmu = _hg_pmu(svme=True)
    host, guest = _interleave(pmu)
    counts = [pmu.rdmsr(F15H_PERF_CTR0 + 2 * i) for i in range(4)]
    assert counts == [host + guest, host, guest, host + guest]


def test_host_guest_only_without_svme() -> None:
    pmu = _hg_pmu(svme=False)
    pmu.accrue(Work(instructions=40).counts, 0, False)
    counts = [pmu.rdmsr(F15H_PERF_CTR0 + 2 * i) for i in range(4)]
    assert counts == [40, 40, 0, 40]  # GuestOnly counts nothing with SVME clear


def test_svme_toggle_rebuilds_plans() -> None:
    pmu = _hg_pmu(svme=False)
    assert pmu.gp[2] not in pmu.counting(guest=True)
    pmu.virtualization_enabled = True
    assert pmu.gp[2] in pmu.counting(guest=True) and pmu.gp[2] not in pmu.counting(guest=False)
    assert pmu.gp[1] in pmu.counting(guest=False) and pmu.gp[1] not in pmu.counting(guest=True)


@given(sel=u64, svme=st.booleans(), in_guest=st.booleans(), n=st.integers(1, 10**9))
def test_physical_counter_never_counts_what_its_filters_exclude(sel: int, svme: bool, in_guest: bool, n: int) -> None:
    pmu = zen4_pmu()
    pmu.virtualization_enabled = svme
    sel = (sel & ~es.EVENT_MASK & ~es.UMASK) | es.encode(INSN)
    pmu.wrmsr(F15H_PERF_CTL0, sel)
    pmu.accrue(Work(instructions=n, cpl=0).counts, 0, in_guest)
    ho, go = bool(sel & HO), bool(sel & GO)
    allowed = ho == go or (ho and (not svme or not in_guest)) or (go and svme and in_guest)
    counts = bool(sel & es.EN) and bool(sel & es.OS) and not es.is_exotic(sel) and allowed
    assert pmu.rdmsr(F15H_PERF_CTR0) == (n if counts else 0)


def test_guest_pmu_ignores_host_guest_bits() -> None:
    pmu = zen4_pmu(guest=True)
    pmu.wrmsr(F15H_PERF_CTL0, es.encode(INSN) | CNT | GO)
    assert pmu.gp[0].count_host and pmu.gp[0].count_guest
    pmu.wrmsr(GLOBAL_CTL, 0)
    assert not pmu.gp[0].count_host and not pmu.gp[0].count_guest


def test_hw_eventsel_forces_guest_only() -> None:
    pmu = zen4_pmu()
    assert pmu.hw_eventsel(es.encode(INSN) | CNT | HO) == es.encode(INSN) | CNT | GO


# ---- counters past the number, RDPMC -----------------------------------------------------------
def test_counters_past_the_number_gp() -> None:
    m = make_model("amd/zen4")
    pmu = m.make_pmu(GuestPmuConfig(gp_counters=2))
    assert len(pmu.gp) == 2
    pmu.wrmsr(F15H_PERF_CTL0 + 2, 0)
    for msr in (F15H_PERF_CTL0 + 4, F15H_PERF_CTR0 + 4, K7_EVNTSEL0 + 2, K7_PERFCTR0 + 3, F15H_PERF_CTL0 + 12):
        with pytest.raises(GuestFault) as e:
            pmu.wrmsr(msr, 0)
        assert e.value.vector == 13
        with pytest.raises(GuestFault):
            pmu.rdmsr(msr)
    pmu.wrmsr(GLOBAL_CTL, 0x3F)
    assert pmu.rdmsr(GLOBAL_CTL) == 0b11


@pytest.mark.parametrize("guest", [False, True])
def test_rdpmc_rules(model, guest: bool) -> None:  # type: ignore[no-untyped-def]
    pmu = model.make_pmu(GuestPmuConfig() if guest else None)
    n = len(pmu.gp)
    for i in range(n):
        pmu.write_counter(pmu.gp[i], 1000 + i)
        assert pmu.rdpmc(i) == 1000 + i
        assert pmu.rdpmc_ecx(pmu.gp[i]) == i
    for ecx in (n, 6, 0x40000000, 1 << 31, 0x10000):
        with pytest.raises(GuestFault):
            pmu.rdpmc(ecx)


def test_rdpmc_masks_to_48_bits() -> None:
    pmu = zen4_pmu()
    pmu.gp[0].value = 2**60 - 1  # a backend that returns more bits still reads as 48
    assert pmu.rdpmc(0) == MASK48


def test_roles(model) -> None:  # type: ignore[no-untyped-def]
    pmu = model.make_pmu()
    ext = model.data.ext_core
    assert pmu.fixed == [] and pmu.fixed_ctrl_msr() is None
    assert pmu.eventsel_msr(pmu.gp[0]) == (F15H_PERF_CTL0 if ext else K7_EVNTSEL0)
    ctls = set(pmu.control_msrs())
    expected = set(range(K7_EVNTSEL0, K7_EVNTSEL0 + 4))
    if ext:
        expected |= {F15H_PERF_CTL0 + 2 * i for i in range(6)}
    assert ctls == expected
    for p in pmu.gp:
        for msr in pmu.counter_msrs(p):
            pmu.write_counter(p, 0)
            pmu.wrmsr(msr, 42 + p.idx)
            assert pmu.read_counter(p) == 42 + p.idx
    assert set(pmu.global_msrs()) == (
        {"ctrl", "status", "status_clr", "status_set"} if model.data.perfmon_v2 else set()
    )
    assert pmu.atomic_global_ctrl_switch is False
