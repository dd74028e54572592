"""What this plugin registers, as plain data: the model names, descriptions, options and the
`amd` cost preset. The registration hook (`vpmu_amd_perfmon/__init__.py`) reads only this
module, so discovering the plugin (`vpmu plugins`, `vpmu models`) does not import the models,
their PMU and their perf driver; `models.py` builds the models from the same data."""

from __future__ import annotations

DEFAULT_FREQ_HZ = 3_000_000_000
MODEL_OPTIONS = {"freq_hz": f"core clock in Hz (default {DEFAULT_FREQ_HZ})"}
#: the `amd` cost preset (Zen4/Turin, ../shared/facts/costs.md) for the core's fields; the
#: mediated mode declares its own field's AMD number itself
COST_PRESETS: dict[str, dict[str, int | float]] = {
    "amd": {
        "vmexit_full_simple": 2500,
        "vmexit_fastpath": 1250,
        "vmexit_to_userspace_extra": 6000,
        "rdmsr_pmu": 100,
        "wrmsr_pmu": 175,
    }
}
#: model name -> description, in registration order
DESCRIPTIONS: dict[str, str] = {
    "amd/k8": "AMD K8 (family 0Fh): legacy PerfMon, 4 counters at PERF_CTL0-3/PERF_CTR0-3",
    "amd/zen2": "AMD Zen 2 (family 17h): PerfCtrExtCore, 6 counters at 0xC0010200, no PerfMonV2",
    "amd/zen4": "AMD Zen 4 (family 19h): PerfMonV2 with global control/status, 6 core counters",
}
