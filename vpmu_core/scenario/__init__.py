"""Scenario files (DESIGN §7): the schema, loading with overrides, and the runner."""

from __future__ import annotations

from vpmu_core.scenario.loader import (
    ScenarioError,
    available_scenarios,
    load,
    parse_mode_spec,
    read_data,
    resolve,
    shipped_scenarios,
    validate,
)
from vpmu_core.scenario.runner import RunResult, compose_host, run_scenario, summarize
from vpmu_core.scenario.schema import Scenario

__all__ = [
    "RunResult",
    "Scenario",
    "ScenarioError",
    "available_scenarios",
    "compose_host",
    "load",
    "parse_mode_spec",
    "read_data",
    "resolve",
    "run_scenario",
    "shipped_scenarios",
    "summarize",
    "validate",
]
