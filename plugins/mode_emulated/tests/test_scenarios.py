"""The shipped scenarios validate and run through the core's scenario runner, and show the
gap document's results in their reports."""

from __future__ import annotations

from typing import Any

import pytest
from emu_helpers import AVAILABLE, plugins_for
from vpmu_core.plugins.discovery import build_catalog

import vpmu_mode_emulated

loader = pytest.importorskip("vpmu_core.scenario.loader")
runner = pytest.importorskip("vpmu_core.scenario.runner")
pytestmark = pytest.mark.skipif("intel/icelake" not in AVAILABLE, reason="scenarios use intel/icelake")


def _catalog() -> Any:
    return build_catalog(plugins_for("intel/icelake"), [])


def _run(name: str) -> dict[str, Any]:
    cat = _catalog()
    assert name in cat.scenarios
    scn, _ = loader.load(cat.scenarios[name], catalog=cat)
    return runner.run_scenario(scn, catalog=cat).report  # type: ignore[no-any-return]


def _guest_row(rep: dict[str, Any]) -> dict[str, Any]:
    (row,) = [r for r in rep["events"] if r["scope"].startswith("guest")]
    return row


def test_all_registered() -> None:
    names = set(_catalog().scenarios)
    assert {f"emulated-gap-3.2-case{i}" for i in range(1, 6)} <= names
    assert {"emulated-guest-mux-4", "emulated-guest-mux-10"} <= names
    assert vpmu_mode_emulated.SCENARIOS_DIR.is_dir()


@pytest.mark.parametrize(
    ("case", "silent", "exact"), [(1, True, False), (3, True, False), (4, False, True), (5, False, True)]
)
def test_gap_case_scenarios(case: int, silent: bool, exact: bool) -> None:
    rep = _run(f"emulated-gap-3.2-case{case}")
    row = _guest_row(rep)
    assert (row["value"] == row["truth"]) is exact
    if case == 1:
        assert row["value"] == 0
    causes = {s["cause"] for s in rep["silent_errors"]}
    assert bool(causes) is silent
    if case == 3:
        assert causes == {"host per-CPU pinned event"}


def test_gap_case2_scenario_shows_the_recovery_after_the_guest_re_enables() -> None:
    rep = _run("emulated-gap-3.2-case2")
    rows = {r["label"]: r for r in rep["events"] if r["scope"].startswith("guest")}
    first, again = rows["guest-perf-stat/branches"], rows["guest-perf-stat-again/branches"]
    assert first["value"] == 0 < first["truth"]  # stuck in ERROR after the host released
    assert again["value"] == again["truth"] > 0  # re-enabled: perf_event_enable left ERROR
    (silent,) = rep["silent_errors"]
    assert silent["cause"] == "host per-CPU pinned event"
    assert 7_900_000 <= silent["end_ns"] <= 8_100_000  # ends when the guest re-enables


def test_guest_mux_scenarios() -> None:
    four = _run("emulated-guest-mux-4")["mode"]
    ten = _run("emulated-guest-mux-10")["mode"]
    assert ten["perf_api_calls_total"] > 25 * four["perf_api_calls_total"]


LBR_CASES = [
    # case, guest LBR records at the end, silent LBR intervals (cause) or none
    (1, 0, "not scheduled at creation"),
    (2, 32, None),
    (3, 32, "host per-CPU pinned event"),  # stale records: the guest reads what was there
    (4, 32, None),
    (5, 32, "host per-CPU pinned event"),  # silent until the guest turns LBR off, then recovers
]


@pytest.mark.parametrize(("case", "records", "cause"), LBR_CASES)
def test_lbr_gap_case_scenarios(case: int, records: int, cause: str | None) -> None:
    lbr_plugin = pytest.importorskip("vpmu_intel_archlbr")
    cat = build_catalog(plugins_for("intel/icelake") + [("intel_archlbr", lbr_plugin)], [])
    name = f"emulated-gap-4.2-case{case}"
    scn, _ = loader.load(cat.scenarios[name], catalog=cat)
    rep = runner.run_scenario(scn, catalog=cat).report
    assert rep["facilities"]["vm0/vcpu0"]["lbr"]["records_nonzero"] == records
    silent = [s for s in rep["silent_errors"] if s["counter"] == "lbr"]
    assert {s["cause"] for s in silent} == ({cause} if cause else set())
    if case == 5:
        # the vLBR event was released and a new one owns the LBR after the guest re-enabled it
        assert rep["mode"]["vcpus"]["vm0/vcpu0"]["vlbr_creates"] == 2
        assert max(s["end_ns"] for s in silent) < 8_000_000
