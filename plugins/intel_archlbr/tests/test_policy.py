"""Why KVM restricts a guest to the host's LBR depth (seed 001), shown through a mode that
switches LBR state with XSAVES/XRSTORS around the inner run loop, and what switching costs."""

from __future__ import annotations

import math
from typing import Any

import pytest
from lbr_helpers import ARCH_CPU, CTL_ALL, LBR_CTL, LBR_DEPTH, SWITCH_PLUGINS, make_vcpu

from vpmu_core import ConfigError, GuestFault, Work
from vpmu_core.costs import CostModel


def switching_vcpu(rule: str, depth: int | None, write_depth: bool = False) -> Any:
    return make_vcpu(
        ARCH_CPU,
        "arch_lbr",
        options={"depth_rule": rule},
        guest_options={"depth": depth} if depth else None,
        mode="lbr_switch",
        plugins=SWITCH_PLUGINS,
        mode_options={"write_depth": write_depth},
    )


def record_then_stop(v: Any) -> tuple[bytes, bytes]:
    """Guest perf's pattern: record, stop LBR (a WRMSR exit: put + load), read the stack.
    Returns the component before the stop and after it."""
    v.wrmsr(LBR_CTL, CTL_ALL)
    v.execute(Work(instructions=2_000_000, branches=200_000))
    st = v.facilities["arch_lbr"]
    before = st.xsaves()
    v.wrmsr(LBR_CTL, 0)  # the exit leaves and re-enters the run loop
    return before, st.xsaves()


def entries(image: bytes) -> bytes:
    return image[0x28:]


def test_any_rule_with_another_depth_wipes_the_guest_at_every_switch() -> None:
    v = switching_vcpu("any", 16)
    before, after = record_then_stop(v)
    assert any(entries(before)), "the guest did record"
    assert not any(entries(after)), "XRSTORS against the host's depth zeroed every record"
    st = v.facilities["arch_lbr"]
    assert st.wipes >= 2 and v.rdmsr(LBR_DEPTH) == 16


def test_any_rule_with_the_host_depth_keeps_the_records() -> None:
    v = switching_vcpu("any", None)
    before, after = record_then_stop(v)
    assert entries(after) == entries(before) and any(entries(after))
    assert v.facilities["arch_lbr"].wipes == 0


def test_kvm_rule_never_lets_the_depths_differ() -> None:
    with pytest.raises(ConfigError):
        switching_vcpu("host_only", 16)
    v = switching_vcpu("host_only", None)
    with pytest.raises(GuestFault):
        v.wrmsr(LBR_DEPTH, 16)
    before, after = record_then_stop(v)
    assert entries(after) == entries(before) and v.facilities["arch_lbr"].wipes == 0


def test_writing_depth_before_xrstors_avoids_the_wipe_at_a_price() -> None:
    """Xen's order (write LBR_DEPTH, then XRSTORS) keeps a different guest depth working,
    for one more WRMSR per switch direction."""
    v = switching_vcpu("any", 16, write_depth=True)
    before, after = record_then_stop(v)
    assert entries(after) == entries(before) and any(entries(after))
    cycles = v.stats.overhead_cycles
    assert cycles.get("lbr_depth_wrmsr", 0) > 0


def test_xsaves_switch_is_charged_per_byte() -> None:
    v = switching_vcpu("host_only", None)
    record_then_stop(v)
    costs = CostModel()
    one = costs.xsaves_base + math.ceil(costs.xsaves_per_byte * 808)
    calls, cycles = v.stats.calls, v.stats.overhead_cycles
    assert calls["lbr_xsaves"] >= 2 and cycles["lbr_xsaves"] == calls["lbr_xsaves"] * one
    assert cycles["lbr_xrstors"] == calls["lbr_xrstors"] * one
    st = v.facilities["arch_lbr"]
    assert st.switch_cost("save", costs) == st.switch_cost("restore", costs) == one


def test_legacy_switch_is_charged_msr_by_msr() -> None:
    from lbr_helpers import DEBUGCTL

    v = make_vcpu("intel/icelake", "lbr", mode="lbr_switch", plugins=SWITCH_PLUGINS)
    v.wrmsr(DEBUGCTL, 1)
    v.execute(Work(instructions=100_000, branches=10_000))
    st = v.facilities["lbr"]
    n = len(st.state_msrs())
    assert n == 5 + 3 * 32
    costs = CostModel()
    calls, cycles = v.stats.calls, v.stats.overhead_cycles
    assert cycles["lbr_rdmsr"] == calls["lbr_rdmsr"] * n * costs.rdmsr_pmu
    assert cycles["lbr_wrmsr"] == calls["lbr_wrmsr"] * n * costs.wrmsr_pmu
    assert st.switch_cost("save", costs) == n * costs.rdmsr_pmu
    # a legacy switch never loses records
    assert all(st.ring.slots[i][0] for i in range(32))
