"""The shipped scenario files validate, run, and show what they claim."""

from __future__ import annotations

import errno

import pytest
import vpmu_intel_arch
from vpmu_core.plugins.discovery import build_catalog
from vpmu_core.scenario.loader import load
from vpmu_core.scenario.runner import run_scenario

import vpmu_mode_mediated

NAMES = ("mediated_nmi_watchdog", "mediated_switch_placement", "mediated_active_counters")


@pytest.fixture
def catalog():
    return build_catalog([("intel_arch", vpmu_intel_arch), ("mode_mediated", vpmu_mode_mediated)], [])


def test_scenarios_are_registered(catalog) -> None:
    assert set(NAMES) <= set(catalog.scenarios)


def _run(catalog, name: str, *sets: str):
    scn, _ = load(name, sets=sets, catalog=catalog)
    return run_scenario(scn, catalog=catalog)


def test_nmi_watchdog_scenario(catalog) -> None:
    res = _run(catalog, "mediated_nmi_watchdog")
    errs = res.report.get("open_errors") or []
    assert errs and all(e["errno"] == errno.EOPNOTSUPP for e in errs), errs
    assert res.report["mode"]["leaks"] == 0
    rfc1 = _run(catalog, "mediated_nmi_watchdog", "mode_options.host_policy=rfc1")
    assert not (rfc1.report.get("open_errors") or [])


def test_placement_scenario_orders_cycles_per_exit(catalog) -> None:
    cpe = {}
    for p in ("exit", "run_loop", "vcpu_run"):
        res = _run(catalog, "mediated_switch_placement", f"mode_options.switch_at={p}")
        (v,) = res.report["mode"]["vcpus"].values()
        cpe[p] = v["cycles_per_exit"]
    assert cpe["vcpu_run"] < cpe["run_loop"] < cpe["exit"]


def test_active_counters_scenario_costs_more_than_idle(catalog) -> None:
    active = _run(catalog, "mediated_active_counters")
    idle = _run(catalog, "mediated_active_counters", "vms.0.perf=[]")
    (a,) = active.report["mode"]["vcpus"].values()
    (i,) = idle.report["mode"]["vcpus"].values()
    assert a["cycles_per_exit"] > i["cycles_per_exit"]
