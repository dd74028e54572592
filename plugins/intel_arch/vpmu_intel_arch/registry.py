"""What this plugin registers, as plain data: the models' names, descriptions, options and
the `intel` cost preset. The registration hook (`plugin.py`) reads only this module, so
discovering the plugin (`vpmu plugins`, `vpmu models`) does not import the models, their
register model and their perf driver; `models.py` and `gracemont.py` build the models."""

from __future__ import annotations

#: the cost preset of these models (`cost_preset = "intel"`): the core's defaults are the
#: Intel numbers (SPR/EMR, ../shared/facts/costs.md), so it changes none of them
COST_PRESETS: dict[str, dict[str, int | float]] = {"intel": {}}

#: model name -> its options (name -> help), for the models that have any
OPTIONS: dict[str, dict[str, str]] = {"intel/skylake": {"smt": "SMT on (default): 4 GP counters per thread; off: 8"}}

#: model name -> the description `vpmu models` shows, in registration order
DESCRIPTIONS: dict[str, str] = {
    "intel/skylake": "Skylake: PMU v4, 4 GP per thread (8 without SMT) + 3 fixed, 48-bit, legacy LBR 32",
    "intel/icelake": "Ice Lake: PMU v5, 8 GP + 4 fixed (SLOTS), perf metrics, legacy LBR 32",
    "intel/sapphirerapids": "Sapphire Rapids: PMU v5, 8 GP + 4 fixed, perf metrics, Arch LBR",
    "intel/gracemont": "Gracemont Atom E-core (PMU v5, 6 GP + 3 fixed, 48-bit, full-width writes, no topdown slots)",
}
