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


def test_guest_mux_scenarios() -> None:
    four = _run("emulated-guest-mux-4")["mode"]
    ten = _run("emulated-guest-mux-10")["mode"]
    assert ten["perf_api_calls_total"] > 25 * four["perf_api_calls_total"]
