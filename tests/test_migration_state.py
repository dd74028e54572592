"""The vCPU migration state (issue 15, "Migration and state"): JSON-safe and versioned, a
JSON round trip keeps every PMU register, restore refuses what it does not understand and
changes nothing then, a restore on a running vCPU reprograms before the next guest work,
cross-mode and cross-facility restores are exact or refused."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

import vpmu_core as vpmu
from vpmu_core import GuestPmuConfig, Work

pytest.importorskip("vpmu_intel_arch")
pytest.importorskip("vpmu_amd_perfmon")
pytest.importorskip("vpmu_mode_emulated")
pytest.importorskip("vpmu_mode_mediated")

USR, OS, EN = 1 << 16, 1 << 17, 1 << 22
INSTRUCTIONS = 0xC0
CPUS = ("intel/icelake", "amd/zen4")
MODES = ("emulated", "mediated")
NO_EXITS = vpmu.ExitProfile(rate_per_s=0)


def vcpu(host: Any, pin: int, pmu: GuestPmuConfig | None = None) -> Any:
    return host.create_vm(vcpus=1, pin=[pin], exits=NO_EXITS, pmu=pmu).vcpus[0]


def busy(v: Any) -> dict[int, int]:
    """Program every GP counter with distinct values, run some work; returns what was written."""
    pmu = v.pmu
    ctrl = pmu.global_msrs().get("ctrl")
    if ctrl is not None:
        v.wrmsr(ctrl, 0)
    for i, p in enumerate(pmu.gp):
        v.wrmsr(pmu.counter_msrs(p)[-1], 0x1234_0000 + (i << 8))
        v.wrmsr(pmu.eventsel_msr(p), INSTRUCTIONS | USR | OS | (EN if i % 2 == 0 else 0))
    if ctrl is not None:
        v.wrmsr(ctrl, (1 << len(pmu.gp)) - 1)
    v.wrmsr(0x834, 0x4F5)
    v.execute(Work(instructions=100_000, branches=10_000))
    return {}


def regs(state: dict[str, Any]) -> dict[str, int]:
    return dict(state["pmu"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", CPUS)
def test_json_round_trip_preserves_every_register(cpu: str, mode: str) -> None:
    host = vpmu.compose(cpu=cpu, mode=mode)
    src = vcpu(host, 0)
    busy(src)
    state = src.save_state()
    text = json.dumps(state)
    assert json.loads(text) == state  # plain JSON-safe data
    assert state["schema"] == "vpmu.vcpu_state" and state["version"] == 1
    assert set(state["pmu"]) == {f"{m:#x}" for m in src.pmu.state_msrs()}
    dst = vcpu(host, 1)
    dst.restore_state(json.loads(text))
    again = dst.save_state()
    assert regs(again) == regs(state) and any(regs(state).values())
    assert again["lapic_lvtpc"] == 0x4F5


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu", CPUS)
def test_restore_on_a_running_vcpu_counts_the_next_work(cpu: str, mode: str) -> None:
    """KVM_SET_MSRS outside KVM_RUN, KVM_REQ_PMU at the next VM-entry: the restored enabled
    counter counts exactly the work that follows."""
    host = vpmu.compose(cpu=cpu, mode=mode)
    src = vcpu(host, 0)
    busy(src)
    state = json.loads(json.dumps(src.save_state()))
    dst = vcpu(host, 1)
    dst.execute(Work(instructions=1_000))  # dst entered the guest: in guest mode now
    assert dst.in_guest
    dst.restore_state(state)
    # dst first: src's execute lets cpu1 idle, which schedules dst out (and in again later)
    for v in (dst, src):
        v.execute(Work(instructions=500_000))
    ctr = src.pmu.counter_msrs(src.pmu.gp[0])[0]
    assert dst.rdmsr(ctr) == src.rdmsr(ctr) >= 0x1234_0000 + 600_000


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s.update(version=2), "state.version"),
        (lambda s: s.update(schema="other"), "state.schema"),
        (lambda s: s.update(extra=1), "state.extra"),
        (lambda s: s.pop("cr4_pce"), "state.cr4_pce"),
        (lambda s: s.update(vendor="amd"), "state.vendor"),
        (lambda s: s.update(cpl=True), "state.cpl"),
        (lambda s: s["pmu"].update({"0x9999": 1}), "state.pmu.0x9999"),
        (lambda s: s["pmu"].update({"390": 1}), "state.pmu.390"),
        (lambda s: s["pmu"].pop("0x186"), "state.pmu"),
        (lambda s: s["pmu"].update({"0x186": -1}), "state.pmu.0x186"),
        (lambda s: s["pmu"].update({"0x186": 1 << 64}), "state.pmu.0x186"),
        (lambda s: s["pmu"].update({"0x186": "0x10"}), "state.pmu.0x186"),
        (lambda s: s["pmu"].update({"0x186": 1 << 21}), "state.pmu.0x186"),  # reserved bit: #GP
        (lambda s: s["facilities"].update(lbr={"kind": "lbr"}), "state.facilities"),
        (lambda s: s.update(pmu={int(k, 16): v for k, v in s["pmu"].items()}), "state.pmu."),  # v0 int keys
    ],
)
def test_restore_refuses_what_it_does_not_understand_and_changes_nothing(mutate: Any, field: str) -> None:
    host = vpmu.compose(cpu="intel/icelake", mode="emulated")
    src = vcpu(host, 0)
    busy(src)
    state = json.loads(json.dumps(src.save_state()))
    mutate(state)
    dst = vcpu(host, 1)
    dst.wrmsr(0xC1, 77)
    before = dst.save_state()
    with pytest.raises(vpmu.StateError) as ei:
        dst.restore_state(state)
    assert ei.value.field.startswith(field), ei.value
    assert isinstance(ei.value, (vpmu.ConfigError, ValueError))
    after = dst.save_state()
    assert regs(after) == regs(before) and after["lapic_lvtpc"] == before["lapic_lvtpc"]


def test_restore_of_a_non_mapping_is_refused() -> None:
    host = vpmu.compose(cpu="intel/icelake", mode="emulated")
    with pytest.raises(vpmu.StateError):
        vcpu(host, 0).restore_state([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(("a", "b"), [("emulated", "mediated"), ("mediated", "emulated")])
@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("cfg", [GuestPmuConfig(), GuestPmuConfig(gp_counters=4)], ids=["kvm-default", "4-gp"])
def test_cross_mode_restore_is_exact_for_the_same_guest_pmu(cpu: str, a: str, b: str, cfg: GuestPmuConfig) -> None:
    # under KVM 7.0 both modes give the same default guest PMU (version 2, at most 3 fixed
    # counters, no LBR format without the LBR facility), so a default guest migrates too
    src = vcpu(vpmu.compose(cpu=cpu, mode=a), 0, cfg)
    busy(src)
    state = json.loads(json.dumps(src.save_state()))
    dst = vcpu(vpmu.compose(cpu=cpu, mode=b), 0, cfg)
    dst.restore_state(copy.deepcopy(state))
    assert regs(dst.save_state()) == regs(state)
    for v in (src, dst):
        v.execute(Work(instructions=250_000))
    ctr = src.pmu.counter_msrs(src.pmu.gp[0])[0]
    assert dst.rdmsr(ctr) == src.rdmsr(ctr)


@pytest.mark.parametrize("src_cfg", [GuestPmuConfig(gp_counters=4), GuestPmuConfig(fixed_counters=2)])
def test_cross_mode_restore_with_another_guest_pmu_is_refused(src_cfg: GuestPmuConfig) -> None:
    src = vcpu(vpmu.compose(cpu="intel/icelake", mode="mediated"), 0, src_cfg)
    dst = vcpu(vpmu.compose(cpu="intel/icelake", mode="emulated"), 0)
    with pytest.raises(vpmu.StateError) as ei:
        dst.restore_state(json.loads(json.dumps(src.save_state())))
    assert ei.value.field.startswith("state.pmu")


def test_cross_facility_restore_is_refused_both_ways() -> None:
    with_lbr = vpmu.compose(cpu="intel/icelake", mode="emulated", facilities=("lbr",))
    without = vpmu.compose(cpu="intel/icelake", mode="emulated")
    s_lbr = json.loads(json.dumps(vcpu(with_lbr, 0).save_state()))
    s_none = json.loads(json.dumps(vcpu(without, 0).save_state()))
    with pytest.raises(vpmu.StateError, match="facilities"):
        vcpu(without, 1).restore_state(s_lbr)
    with pytest.raises(vpmu.StateError, match="facilities"):
        vcpu(with_lbr, 1).restore_state(s_none)
    vcpu(with_lbr, 1).restore_state(s_lbr)  # same facilities: fine
