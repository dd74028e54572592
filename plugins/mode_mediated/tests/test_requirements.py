"""Requirements (v6 17/44, 18/44): Intel v4+ with full-width writes, AMD PerfMonV2; and the
mode's options."""

from __future__ import annotations

import dataclasses

import pytest
from vpmu_amd_perfmon.models import make_model
from vpmu_core import ConfigError
from vpmu_intel_arch.models import make_skylake

import vpmu_mode_mediated


def test_skylake_without_full_width_writes_is_refused() -> None:
    model = make_skylake({})
    vpmu_mode_mediated.make_mode(model, {})  # v4 with FW writes: accepted
    model.caps = dataclasses.replace(model.caps, full_width_writes=False)
    with pytest.raises(ConfigError, match="full-width counter writes"):
        vpmu_mode_mediated.make_mode(model, {})


def test_intel_v3_is_refused() -> None:
    model = make_skylake({})
    model.caps = dataclasses.replace(model.caps, version=3)
    with pytest.raises(ConfigError, match="version 4"):
        vpmu_mode_mediated.make_mode(model, {})


@pytest.mark.parametrize("cpu", ["amd/zen2", "amd/k8"])
def test_amd_without_perfmon_v2_is_refused(cpu, host_factory) -> None:
    with pytest.raises(ConfigError, match="PerfMonV2"):
        host_factory(cpu)


def test_zen4_is_accepted() -> None:
    mode = vpmu_mode_mediated.make_mode(make_model("amd/zen4"), {})
    assert not mode.rules.atomic_global_ctrl
    assert "status_set" in mode.rules.passthrough_global_roles


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"switch_at": "vmexit"}, "switch_at"),
        ({"host_policy": "rfc3"}, "host_policy"),
        ({"elide_writes": "maybe"}, "elide_writes"),
    ],
)
def test_bad_options_name_the_field(options, field, host_factory) -> None:
    with pytest.raises(ConfigError, match=field):
        host_factory("intel/icelake", **options)


def test_guest_without_pmu_keeps_everything_intercepted(host_factory) -> None:
    from vpmu_core import GuestFault, GuestPmuConfig, Work

    host = host_factory("intel/icelake")
    v = host.create_vm(vcpus=1, pin=[0], pmu=GuestPmuConfig(version=0)).vcpus[0]
    assert not v.mode_state.enabled
    v.execute(Work(instructions=1000))
    for msr in (0xC3, 0x4C1, 0x38F):  # counter MSRs of a guest without a vPMU #GP...
        with pytest.raises(GuestFault):
            v.rdmsr(msr)
    # ...except the legacy ones KVM's common code answers: P6 PERFCTR0/1 read 0 (x86.c
    # kvm_get_msr_common; selftests pmu_counters_test "KVM drops writes to MSR_P6_PERFCTR[0|1]")
    assert v.rdmsr(0xC1) == 0
    assert host.report()["mode"]["loads"] == 0
