"""vCPU save_state/restore_state carries LBR state bit-exactly (Sean: "save/restore
(migration) works"), including IA32_LBR_DEPTH and IA32_LBR_CTL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from lbr_helpers import (
    ARCH_CPU,
    CTL_ALL,
    DEBUGCTL,
    LBR_CTL,
    LBR_DEPTH,
    LBR_SELECT,
    LBR_TOS,
    LER_FROM,
    LER_INFO,
    arch_records,
    legacy_records,
    make_vcpu,
)

from vpmu_core import ConfigError, Work


def migrate(src: Any, **target_kw: Any) -> Any:
    state = json.loads(json.dumps(src.save_state()))  # the state survives serialisation
    cpu = src.host.composition["cpu"]
    fac = src.host.composition["facilities"][0]
    dst = make_vcpu(cpu, fac, seed=99, **target_kw)
    dst.restore_state(state)
    return dst


@pytest.mark.parametrize("cpu", ["intel/skylake", "intel/icelake"])
def test_legacy_round_trip_is_bit_exact(cpu: str) -> None:
    src = make_vcpu(cpu, "lbr")
    src.wrmsr(LBR_SELECT, 0x1)
    src.wrmsr(DEBUGCTL, 1 | 1 << 11)
    src.cpl = 3
    src.execute(Work(instructions=1_000_000, branches=100_003, cpl=3))
    src.cpl = 0
    src.wrmsr(LER_FROM, 0x1234)
    dst = migrate(src)
    assert dst.facilities["lbr"].snapshot() == src.facilities["lbr"].snapshot()
    assert legacy_records(dst) == legacy_records(src)
    for msr in (DEBUGCTL, LBR_SELECT, LBR_TOS, LER_FROM):
        assert dst.rdmsr(msr) == src.rdmsr(msr)
    assert dst.rdmsr(LBR_TOS) != 0


def test_arch_round_trip_is_bit_exact_including_depth_and_ctl() -> None:
    opts = {"depth_rule": "any"}
    src = make_vcpu(ARCH_CPU, "arch_lbr", options=opts, guest_options={"depth": 24})
    src.wrmsr(LBR_CTL, CTL_ALL | 1 << 3)
    src.wrmsr(DEBUGCTL, 1 << 11)
    src.execute(Work(instructions=1_000_000, branches=100_000))
    src.wrmsr(LBR_CTL, 0x7F0006)
    src.wrmsr(LER_INFO, 0xABC)
    dst = migrate(src, options=opts)  # the target starts at depth 32
    assert dst.rdmsr(LBR_DEPTH) == 24 and dst.rdmsr(LBR_CTL) == 0x7F0006
    assert dst.rdmsr(DEBUGCTL) == 1 << 11 and dst.rdmsr(LER_INFO) == 0xABC
    assert arch_records(dst) == arch_records(src)
    assert dst.facilities["arch_lbr"].xsaves() == src.facilities["arch_lbr"].xsaves()
    assert dst.facilities["arch_lbr"].wipes == 0


def test_arch_round_trip_of_a_live_recording_lbr() -> None:
    src = make_vcpu(ARCH_CPU, "arch_lbr")
    src.wrmsr(LBR_CTL, CTL_ALL)
    src.execute(Work(instructions=1_000_000, branches=100_000))
    dst = migrate(src)
    assert dst.facilities["arch_lbr"].active
    assert dst.facilities["arch_lbr"].snapshot() == src.facilities["arch_lbr"].snapshot()


def test_arch_state_of_a_depth_the_target_forbids_is_refused() -> None:
    src = make_vcpu(ARCH_CPU, "arch_lbr", options={"depth_rule": "any"}, guest_options={"depth": 8})
    with pytest.raises(ConfigError):
        migrate(src)  # target under the KVM rule: host depth only
