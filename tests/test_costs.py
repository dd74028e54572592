"""The cost model is cost-neutral (issue 13 §3): the core keeps what every mode pays, each
mode/facility/vendor declares its own fields and presets on its spec, compose() merges them,
and an unknown preset is an error naming the known ones (CLI: exit 2, one line)."""

from __future__ import annotations

from typing import Any

import pytest

import vpmu_core as vpmu
from tests.test_cli import vpmu as run_cli
from vpmu_core.api import CostField, CostFields, ModeSpec, hookimpl
from vpmu_core.costs import CostModel
from vpmu_core.errors import ConfigError
from vpmu_core.scenario.loader import ScenarioError, validate
from vpmu_core.testing import toy

CORE_RUN_LOOP = (
    "vmexit_fastpath",
    "vmexit_full_simple",
    "vmexit_to_userspace_extra",
    "pmi_inject",
    "exit_host_ipc_x100",
)
MODE_FIELDS = ("kvm_emulated_msr_access", "mediated_switch_fixed", "lvtpc_switch", "mediated_global_ctrl_vmread")


def test_the_core_model_keeps_the_run_loop_fields_and_no_mode_field() -> None:
    assert set(CORE_RUN_LOOP) <= set(CostModel.model_fields)
    assert not set(MODE_FIELDS) & set(CostModel.model_fields)


def test_each_mode_gets_its_own_fields_and_the_vendor_preset() -> None:
    emu = vpmu.compose(cpu="intel/icelake", mode="emulated", cpus=1)
    assert emu.costs.kvm_emulated_msr_access == 400 and not hasattr(emu.costs, "mediated_switch_fixed")
    med = vpmu.compose(cpu="amd/zen4", mode="mediated", cpus=1)
    # amd_perfmon's preset numbers for core fields, the mediated mode's own for its field
    assert (med.costs.vmexit_full_simple, med.costs.mediated_switch_fixed) == (2500, 1450)
    assert med.costs.mediated_global_ctrl_vmread == 20 and not hasattr(med.costs, "kvm_emulated_msr_access")
    # a preset picked by name overrides the model's
    med_intel = vpmu.compose(cpu="amd/zen4", mode="mediated", cpus=1, costs={"preset": "intel"})
    assert (med_intel.costs.vmexit_full_simple, med_intel.costs.mediated_switch_fixed) == (1200, 400)


def test_an_unknown_preset_is_an_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError) as ei:
        vpmu.compose(cpu="intel/icelake", mode="emulated", costs={"preset": "arm"})
    assert str(ei.value) == "costs.preset: unknown cost preset 'arm' (allowed: amd, intel)"


def test_a_model_naming_an_undeclared_preset_is_refused() -> None:
    class Odd(toy.ToyModel):
        cost_preset = "odd"

    class OddPlugin:
        @hookimpl
        def vpmu_register_cpu_models(self, register: Any) -> None:
            register(vpmu.CpuModelSpec(name="toy/odd", vendor="toy", factory=Odd))

    with pytest.raises(ConfigError, match=r"cost_preset of toy/odd: unknown cost preset 'odd' \(allowed: toy\)"):
        vpmu.compose(cpu="toy/odd", mode="reference", plugins=[("toy", toy), ("odd", OddPlugin())])


def test_the_cli_refuses_an_unknown_preset_with_exit_2_and_one_line() -> None:
    r = run_cli("run", "default", "-q", "--set", "costs.preset=arm", env={})
    assert r.returncode == 2, r.stderr
    assert "costs.preset: unknown cost preset 'arm' (allowed: amd, intel" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


class WidgetCosts(CostFields):
    widget_exit: int = CostField(77, description="a third-party mode's own per-exit work")


class WidgetMode(toy.ReferenceMode):
    @hookimpl
    def vpmu_vm_exit(self, vcpu: Any, reason: str, fastpath: bool) -> None:
        vcpu.charge("widget_exit", vcpu.costs.widget_exit)


class WidgetPlugin:
    @hookimpl
    def vpmu_register_modes(self, register: Any) -> None:
        register(
            ModeSpec(name="widget", factory=WidgetMode, costs=WidgetCosts, cost_presets={"toy": {"widget_exit": 5}})
        )


def _widget_host(costs: dict[str, Any] | None = None) -> Any:
    return vpmu.compose(
        cpu="toy/basic", mode="widget", cpus=1, costs=costs, plugins=[("toy", toy), ("w", WidgetPlugin())]
    )


def test_a_mode_declared_cost_field_is_charged_with_its_preset_and_override() -> None:
    for costs, per_exit in ((None, 77), ({"widget_exit": 9}, 9), ({"preset": "toy"}, 5)):
        host = _widget_host(costs)
        v = host.create_vm(vcpus=1, exits=vpmu.ExitProfile(rate_per_s=200_000)).vcpus[0]
        v.execute(vpmu.Work(instructions=3_000_000))
        exits = v.stats.total_exits
        assert exits > 0
        assert v.stats.overhead_cycles["widget_exit"] == per_exit * exits


def test_a_cost_field_declared_twice_is_refused() -> None:
    class Clash(CostFields):
        vmexit_fastpath: int = CostField(1)

    class ClashPlugin:
        @hookimpl
        def vpmu_register_modes(self, register: Any) -> None:
            register(ModeSpec(name="clash", factory=toy.ReferenceMode, costs=Clash))

    with pytest.raises(
        ConfigError, match="cost field 'vmexit_fastpath' of ModeSpec 'clash' is already declared by the core"
    ):
        vpmu.compose(cpu="toy/basic", mode="clash", plugins=[("toy", toy), ("c", ClashPlugin())])


def test_scenario_keys_of_plugin_fields_validate_against_the_installed_plugins() -> None:
    base = {"cpu": "intel/icelake", "mode": "emulated"}
    scn = validate({**base, "costs": {"mediated_switch_fixed": 3, "kvm_emulated_msr_access": 9}})
    assert scn.cost_overrides() == {"mediated_switch_fixed": 3, "kvm_emulated_msr_access": 9}
    with pytest.raises(ScenarioError, match=r"costs.widget_exit: unknown field \(allowed: "):
        validate({**base, "costs": {"widget_exit": 1}})
    with pytest.raises(ScenarioError, match="costs.lvtpc_switch: Input should be greater than or equal to 0"):
        validate({**base, "costs": {"lvtpc_switch": -1}})
    # an override of a field of a mode that is not composed changes nothing (as before)
    host = vpmu.compose(cpu="intel/icelake", mode="emulated", cpus=1, costs=scn.cost_overrides())
    assert host.costs.kvm_emulated_msr_access == 9
