"""The vendor-neutral helpers of vpmu_core.hw that every vendor gets through vpmu_core.api:
register kinds (write-1-to-set, derived), counter write rules, the enable fold, the
entry-load split on both sides, the guest-config clamp and the option parsers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpmu_core.api import (
    ALWAYS_ON,
    ConfigError,
    GlobalCtrlSplit,
    GuestFault,
    GuestPmuConfig,
    Pmc,
    PmuCapabilities,
    Register,
    clamp_guest,
    entry_split,
    fold_enables,
    parse_bool,
    parse_int,
    sign_extend,
)
from vpmu_core.testing.toy import ToyPmu

U32 = st.integers(0, (1 << 32) - 1)


# ---- register kinds -----------------------------------------------------------------------
def test_write_1_to_set_sets_only_the_written_bits_and_reads_as_given():
    status = Register("STATUS", writable=0xF, read_only=True)
    seen = []
    status.on_write = lambda old, new: seen.append((old, new))
    st_set = Register("STATUS_SET", writable=0xF, reads_as=0, write_1_to_set=status)
    status.value = 0b0001
    st_set.write(0b0100)
    assert status.value == 0b0101 and st_set.read() == 0
    assert seen == [(0b0001, 0b0101)]
    with pytest.raises(GuestFault):
        st_set.write(0x10)  # reserved bit: #GP, nothing set
    assert status.value == 0b0101


def test_derived_register_computes_each_read_and_never_takes_a_write():
    state = {"v": 3}
    r = Register("INUSE", compute=lambda: state["v"])
    assert r.read() == 3
    state["v"] = 7
    assert r.read() == 7
    for host in (False, True):
        with pytest.raises(GuestFault):
            r.write(0, host_initiated=host)


def test_host_ignored_register_acts_only_on_guest_writes():
    status = Register("STATUS", writable=0xF)
    clr = Register("CLR", writable=0xF, reserved="drop", reads_as=0, write_1_to_clear=status, host_ignored=True)
    status.value = 0xF
    clr.write(0x1, host_initiated=True)
    assert status.value == 0xF
    clr.write(0x1)
    assert status.value == 0xE


# ---- counter write rules --------------------------------------------------------------------
@given(U32)
def test_legacy_counter_write_sign_extends_guest_writes_and_takes_host_writes_whole(v):
    pmu = ToyPmu()
    p = pmu.gp[0]
    pmu.add_counter(0x999, p, "legacy")
    pmu.wrmsr(0x999, v)
    assert pmu.rdmsr(0x999) == sign_extend(v, 32, 48)
    pmu.host_initiated = True
    try:
        pmu.wrmsr(0x999, v | 1 << 40)
    finally:
        pmu.host_initiated = False
    assert p.value == v | 1 << 40


def test_checked_counter_write_faults_above_the_width_and_masked_truncates():
    pmu = ToyPmu()
    p = pmu.gp[1]
    pmu.add_counter(0x998, p, "checked")
    pmu.add_counter((0x997, 0x996), p, "masked")
    pmu.wrmsr(0x998, (1 << 48) - 1)
    assert p.value == (1 << 48) - 1
    with pytest.raises(GuestFault):
        pmu.wrmsr(0x998, 1 << 48)
    assert p.value == (1 << 48) - 1, "a faulting write changes nothing"
    pmu.wrmsr(0x996, (1 << 50) | 5)
    assert pmu.rdmsr(0x997) == 5, "masked: upper bits dropped, both aliases read the counter"


# ---- enables and the entry-load split --------------------------------------------------------
def test_fold_enables_takes_the_counters_bit_of_each_control_and_the_filters():
    p = Pmc(2, 48)
    fold_enables(p, 0b100, 0b000)
    assert (p.global_en, p.count_host, p.count_guest) == (True, True, False)
    fold_enables(p, 0b000, 0b100)
    assert (p.global_en, p.count_host, p.count_guest) == (False, False, True)
    fold_enables(p, ALWAYS_ON, ALWAYS_ON, host_ok=False)
    assert (p.global_en, p.count_host, p.count_guest) == (True, False, True)
    fixed = Pmc(33, 48)
    fold_enables(fixed, 1 << 33, 0, guest_ok=True)
    assert (fixed.count_host, fixed.count_guest) == (True, False)


def test_entry_split_physical_uses_the_entry_load_guest_pmu_one_control():
    phys, guest = ToyPmu(), ToyPmu(guest=True)
    assert entry_split(phys, 0x300, 0b11) == (0b11, 0b11), "nothing loaded: the live value"
    phys.entry_loads = {0x300: 0b01}
    guest.entry_loads = {0x300: 0b01}
    assert entry_split(phys, 0x300, 0b11) == (0b11, 0b01)
    assert entry_split(guest, 0x300, 0b11) == (0b11, 0b11)


class _Port:
    def __init__(self) -> None:
        self.msrs: dict[int, int] = {}
        self.entry_loads: dict[int, int] = {0x777: 5}

    def wrmsr(self, msr: int, value: int) -> None:
        self.msrs[msr] = value

    def set_entry_loads(self, loads: dict[int, int]) -> None:
        self.entry_loads = dict(loads)


def test_global_ctrl_split_live_drops_guest_only_entry_drops_host_only():
    s = GlobalCtrlSplit()
    s.set(0, True)
    s.set(1, True, exclude_guest=True)
    s.set(2, True, exclude_host=True)
    port = _Port()
    s.apply(port, 0x38F)
    assert port.msrs[0x38F] == 0b011
    assert port.entry_loads == {0x777: 5, 0x38F: 0b101}, "the other entry-load entries are kept"
    s.set(1, False)
    s.set(2, True)  # restarted without exclude_host
    assert (s.host_value, s.guest_value) == (0b101, 0b101)


# ---- guest-config clamp ------------------------------------------------------------------------
HOST = PmuCapabilities(version=5, gp_counters=8, fixed_counters=4, gp_width=48, fixed_width=48, full_width_writes=True)


def test_clamp_fills_from_the_host_and_reduces_to_it():
    g = clamp_guest(GuestPmuConfig(), HOST, "x/y")
    assert (g.version, g.gp_counters, g.fixed_counters, g.full_width_writes, g.lbr) == (5, 8, 4, True, False)
    g = clamp_guest(GuestPmuConfig(version=9, gp_counters=64, fixed_counters=9), HOST, "x/y")
    assert (g.version, g.gp_counters, g.fixed_counters) == (5, 8, 4)
    g = clamp_guest(GuestPmuConfig(version=1), HOST, "x/y")
    assert (g.version, g.gp_counters, g.fixed_counters) == (1, 8, 0), "v1 has no fixed counters"
    g = clamp_guest(GuestPmuConfig(version=0), HOST, "x/y")
    assert (g.gp_counters, g.fixed_counters, g.full_width_writes) == (0, 0, False)


def test_clamp_refuses_contradictions_the_user_spelled_out():
    for cfg in (
        GuestPmuConfig(version=0, gp_counters=2),
        GuestPmuConfig(version=1, fixed_counters=1),
        GuestPmuConfig(lbr=True),
    ):
        with pytest.raises(ConfigError):
            clamp_guest(cfg, HOST, "x/y")
    no_fw = PmuCapabilities(2, 4, 1, 48, 48, full_width_writes=False)
    with pytest.raises(ConfigError, match="x/y has no full-width writes"):
        clamp_guest(GuestPmuConfig(full_width_writes=True), no_fw, "x/y")


# ---- option parsers -------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["true", "TRUE", "1", "yes", "on", " On ", True])
def test_parse_bool_true(text):
    assert parse_bool("o", text) is True


@pytest.mark.parametrize("text", ["false", "0", "no", "off", False])
def test_parse_bool_false(text):
    assert parse_bool("o", text) is False


def test_parse_bool_names_the_option():
    with pytest.raises(ConfigError, match="mode_options.lazy: expected a boolean"):
        parse_bool("mode_options.lazy", "maybe")


def test_parse_int_accepts_ints_and_strings_within_bounds():
    assert parse_int("n", "0x10") == 16 and parse_int("n", "3_000") == 3000 and parse_int("n", 7) == 7
    for bad in ("many", True, "9"):
        with pytest.raises(ConfigError):
            parse_int("n", bad, maximum=8)


def test_host_perf_keeps_the_other_entry_loads_of_a_real_cpu():
    """The engine's register port shows the physical PMU's entry loads, so the driver's
    split keeps the other entries (Linux intel_guest_get_msrs() returns several, e.g.
    PEBS_ENABLE beside GLOBAL_CTRL) instead of replacing the list with its own one."""
    import vpmu_core as vpmu

    host = vpmu.compose(cpu="intel/icelake", mode="emulated", cpus=1)
    pmu = host.cpus[0].pmu
    pmu.set_entry_loads({**pmu.entry_loads, 0x3F1: 0})  # IA32_PEBS_ENABLE
    host.perf_event_open(vpmu.PerfEventAttr(config="cycles", exclude_guest=True), pid=-1, cpu=0)
    assert pmu.entry_loads.get(0x3F1) == 0
    assert 0x38F in pmu.entry_loads  # the driver's own GLOBAL_CTRL entry
