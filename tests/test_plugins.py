"""Plugin loading: broken plugins are listed not fatal, duplicates refused, typos caught."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import vpmu_core as vpmu
from vpmu_core.markers import hookimpl
from vpmu_core.plugins.discovery import build_catalog
from vpmu_core.plugins.resolve import HYPERVISOR_HOOKS
from vpmu_core.testing import toy


def module(name: str, **attrs: object) -> types.ModuleType:
    m = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(m, k, v)
    return m


def test_toy_plugin_registers_model_and_mode():
    cat = build_catalog([("toy", toy)], [])
    assert "toy/basic" in cat.cpu_models and "reference" in cat.modes
    rec = cat.plugin("toy")
    assert rec.status == "loaded"
    assert rec.hooks == ("vpmu_register_cpu_models", "vpmu_register_modes")


def test_misspelled_hook_is_rejected_with_reason():
    @hookimpl
    def vpmu_register_cpu_model(register):  # missing "s"
        pass

    cat = build_catalog([("typo", module("typo", vpmu_register_cpu_model=vpmu_register_cpu_model))], [])
    rec = cat.plugin("typo")
    assert rec.status == "failed" and "unknown hook" in rec.load_error


def test_plugin_with_no_vpmu_hook_is_rejected():
    import pluggy

    other = pluggy.HookimplMarker("Vpmu")

    @other
    def vpmu_register_modes(register):
        pass

    cat = build_catalog([("wrongmarker", module("wrongmarker", vpmu_register_modes=vpmu_register_modes))], [])
    rec = cat.plugin("wrongmarker")
    assert rec.status == "failed" and "implements no vpmu hook" in rec.load_error


def test_duplicate_model_names_refuse_composition_naming_both():
    @hookimpl
    def vpmu_register_cpu_models(register):
        register(vpmu.CpuModelSpec(name="toy/basic", vendor="x", factory=toy.ToyModel))

    dup = module("dup", vpmu_register_cpu_models=vpmu_register_cpu_models)
    with pytest.raises(vpmu.ConfigError) as e:
        vpmu.compose(cpu="toy/basic", mode="reference", plugins=[("toy", toy), ("zdup", dup)])
    assert "toy" in str(e.value) and "zdup" in str(e.value)


def test_register_raising_is_a_failed_plugin_not_a_crash():
    @hookimpl
    def vpmu_register_modes(register):
        raise RuntimeError("boom")

    cat = build_catalog([("toy", toy), ("bad", module("bad", vpmu_register_modes=vpmu_register_modes))], [])
    assert cat.plugin("bad").status == "failed" and "boom" in cat.plugin("bad").load_error
    assert "reference" in cat.modes


def test_unknown_names_list_the_allowed_ones():
    with pytest.raises(vpmu.ConfigError) as e:
        vpmu.compose(cpu="toy/nope", mode="reference", plugins=[("toy", toy)])
    assert "toy/basic" in str(e.value) and e.value.field == "cpu"
    with pytest.raises(vpmu.ConfigError) as e:
        vpmu.compose(cpu="toy/basic", mode="nope", plugins=[("toy", toy)])
    assert "reference" in str(e.value)
    with pytest.raises(vpmu.ConfigError) as e:
        vpmu.compose(cpu="toy/basic", mode="reference", facilities=("lbr",), plugins=[("toy", toy)])
    assert e.value.field == "facility"
    with pytest.raises(vpmu.ConfigError):
        vpmu.compose(cpu="toy/basic", mode="reference", mode_options={"bogus": 1}, plugins=[("toy", toy)])


def test_hooks_resolved_once_per_composition():
    host = vpmu.compose(cpu="toy/basic", mode="reference", plugins=[("toy", toy)])
    hooks = host.hooks
    assert hooks.implemented["vpmu_vcpu_create"] == ["mode:reference"]
    # direct callables, not pluggy hook callers
    assert hooks.vcpu_create.__qualname__.startswith("ReferenceMode.")
    assert set(HYPERVISOR_HOOKS) >= {"vpmu_vm_exit", "vpmu_guest_wrmsr", "vpmu_host_pmi"}


def test_every_hookspec_is_documented_with_its_signature():
    from vpmu_core import hookspecs
    from vpmu_core.plugins.discovery import new_plugin_manager

    doc = (Path(__file__).parents[1] / "docs" / "plugin-hooks.md").read_text()
    pm = new_plugin_manager()
    for name in dir(hookspecs):
        if name.startswith("vpmu_") and callable(getattr(hookspecs, name)):
            args = ", ".join(getattr(pm.hook, name).spec.argnames)
            assert f"{name}({args})" in doc, f"docs/plugin-hooks.md lacks {name}({args})"


def test_broken_installed_plugin_is_listed_not_fatal(tmp_path):
    dist = tmp_path / "vpmu_broken-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vpmu-broken\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text("[vpmu.plugins]\nbroken = vpmu_no_such_module_xyz\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "vpmu_core.cli.main", "plugins", "--json"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    rows = data["plugins"] if isinstance(data, dict) else data
    broken = [p for p in rows if p["name"] == "broken"]
    assert broken and broken[0]["status"] == "failed" and "vpmu_no_such_module_xyz" in broken[0]["load_error"]


def test_resolved_hooks_declare_every_hypervisor_hook():
    from vpmu_core.plugins.resolve import ResolvedHooks

    declared = set(ResolvedHooks.__annotations__)
    assert declared == {h[len("vpmu_") :] for h in HYPERVISOR_HOOKS}


def test_package_exports_load_lazily_and_all_resolve() -> None:
    """`import vpmu_core` imports none of its submodules; every public name resolves."""
    import subprocess
    import sys

    code = (
        "import sys, vpmu_core as v; assert 'vpmu_core.host' not in sys.modules, 'eager';"
        "assert sorted(v.__all__) == sorted(v._EXPORTS) and all(getattr(v, n) for n in v.__all__)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


class _CappingMode(toy.ReferenceMode):
    """The reference mode with a cap on guest GP counters, as a hook."""

    @vpmu.hookimpl
    def vpmu_limit_guest_pmu(self, cfg):
        return cfg.model_copy(update={"gp_counters": 2})


class _LegacyMode(toy.ReferenceMode):
    """A 0.1-style mode: the cap as a plain method, which the core no longer looks up."""

    def limit_guest_pmu(self, cfg):
        return cfg.model_copy(update={"gp_counters": 2})


def _plugin_with(mode_cls):
    class Plugin:
        @vpmu.hookimpl
        def vpmu_register_modes(self, register):
            register(vpmu.ModeSpec(name="capping", factory=mode_cls, description="test"))

    return Plugin()


def test_mode_contract_methods_are_hooks():
    host = vpmu.compose(cpu="toy/basic", mode="capping", plugins=[("toy", toy), ("cap", _plugin_with(_CappingMode))])
    assert len(host.create_vm().vcpus[0].pmu.gp) == 2


def test_a_plain_legacy_method_is_named_with_its_hook():
    with pytest.warns(UserWarning, match="limit_guest_pmu.*vpmu_limit_guest_pmu"):
        host = vpmu.compose(cpu="toy/basic", mode="capping", plugins=[("toy", toy), ("cap", _plugin_with(_LegacyMode))])
    assert len(host.create_vm().vcpus[0].pmu.gp) == 4  # not applied: it is not a hook


def test_a_plugin_whose_second_registration_hook_raises_provides_nothing():
    class HalfBroken:
        @vpmu.hookimpl
        def vpmu_register_cpu_models(self, register):
            register(vpmu.CpuModelSpec(name="half/cpu", vendor="toy", factory=toy.ToyModel))

        @vpmu.hookimpl
        def vpmu_register_modes(self, register):
            raise RuntimeError("boom")

    cat = build_catalog([("toy", toy), ("half", HalfBroken())], [])
    (rec,) = [r for r in cat.plugins if r.name == "half"]
    assert rec.status == "failed" and "boom" in rec.load_error
    assert "half/cpu" not in cat.cpu_models
    with pytest.raises(vpmu.ConfigError):
        vpmu.compose(cpu="half/cpu", mode="reference", catalog_=cat)


def test_wrapper_implementations_of_hypervisor_hooks_are_refused():
    class Wrapping(toy.ReferenceMode):
        @vpmu.hookimpl(wrapper=True)
        def vpmu_vm_entry(self, vcpu):
            return (yield)

    with pytest.raises(vpmu.ConfigError, match="wrapper"):
        vpmu.compose(cpu="toy/basic", mode="capping", plugins=[("toy", toy), ("w", _plugin_with(Wrapping))])


def test_registration_after_compose_is_refused():
    host = vpmu.compose(cpu="toy/basic", mode="reference", plugins=[("toy", toy)])
    with pytest.raises(vpmu.ConfigError, match="closed"):
        host.plugin_manager.register(object(), name="late")
