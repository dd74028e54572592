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


def test_watchdog_after_destroy_scenario_shows_the_rule_ending(catalog) -> None:
    """While vm0 exists the watchdog is refused (EOPNOTSUPP); after its destroy the watchdog
    opens and counts; then the next mediated VM is refused (EBUSY). vm0's figures stay."""
    rep = _run(catalog, "mediated_watchdog_after_destroy").report
    errs = rep["open_errors"]
    assert {e["errno"] for e in errs if e["session"] == "nmi_watchdog_early"} == {errno.EOPNOTSUPP}
    (vm1,) = [e for e in errs if e["session"] == "vm1"]
    assert vm1["errno"] == errno.EBUSY and vm1["scope"] == "kvm" and vm1["time_ns"] == 14_000_000
    wd = [e for e in rep["events"] if e["label"] == "nmi_watchdog/cycles"]
    assert len(wd) == 2 and all(e["state"] == "ACTIVE" for e in wd)
    assert sum(e["value"] for e in wd) > 0
    guest = [e for e in rep["events"] if e["scope"] == "guest:vm0"]
    assert guest and all(e["time_enabled_ns"] <= 10_000_000 for e in guest)
    assert "vm0/vcpu0" in rep["overhead"] and "vm1/vcpu0" not in rep["overhead"]
    assert rep["mode"]["mediated_vms"] == 0 and rep["leaks"]["leaks"] == []
