"""The core is facility-neutral (issue 13 §3): which facilities a `GuestPmuConfig` switch
governs is what each facility declares (`FacilitySpec.guest_switch`), never a facility name
written in the hypervisor layer; the messages stay what they were."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vpmu_core as vpmu
from vpmu_core.api import FacilitySpec, hookimpl
from vpmu_core.errors import ConfigError
from vpmu_core.testing import toy

HV = Path(__file__).resolve().parents[1] / "vpmu_core" / "hv"


def test_the_hypervisor_layer_names_no_facility() -> None:
    names = {"lbr", "arch_lbr"}
    found = [
        f"{p.name}:{n.lineno}: {n.value!r}"
        for p in sorted(HV.glob("*.py"))
        for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(n, ast.Constant) and n.value in names and p.name != "config.py"
    ]
    assert found == []


def test_a_guest_lbr_without_an_lbr_facility_names_the_declaring_facilities() -> None:
    host = vpmu.compose(cpu="intel/icelake", mode="emulated", cpus=1)
    with pytest.raises(ConfigError) as ei:
        host.create_vm(pmu=vpmu.GuestPmuConfig(lbr=True))
    assert str(ei.value) == "pmu.lbr: a guest LBR needs the lbr or arch_lbr facility (allowed: false)"


def test_the_lbr_switch_governs_the_facilities_that_declare_it() -> None:
    host = vpmu.compose(cpu="intel/icelake", mode="emulated", facilities=("lbr",), cpus=1)
    assert host.facility_switches == {"lbr": "lbr", "arch_lbr": "lbr"}
    on = host.create_vm(pmu=vpmu.GuestPmuConfig(lbr=True))
    off = host.create_vm(pmu=vpmu.GuestPmuConfig(lbr=False))
    assert on.facility_enabled("lbr") and not off.facility_enabled("lbr")


class _Gadget:
    """A third-party facility with no switch: `lbr=False` does not touch it."""

    name = "gadget"
    resource = None

    def __init__(self, model: object, options: dict) -> None:
        pass


class _GadgetPlugin:
    @hookimpl
    def vpmu_register_facilities(self, register):  # type: ignore[no-untyped-def]
        register(FacilitySpec(name="gadget", factory=_Gadget, guest_switch="widgets"))


def test_a_switch_the_guest_config_lacks_is_refused_at_compose() -> None:
    plugins = [("toy", toy), ("gadget", _GadgetPlugin())]
    with pytest.raises(ConfigError, match="'gadget' declares guest_switch 'widgets', not a GuestPmuConfig switch"):
        vpmu.compose(cpu="toy/basic", mode="reference", plugins=plugins)
