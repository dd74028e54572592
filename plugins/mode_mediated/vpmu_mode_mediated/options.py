"""The mode's options: where the PMU context switch happens, which host-perf rules apply,
and whether counter writes that already match are elided.

Options arrive from Python (`mode_options={...}`), scenario files and `--set key=value`
on the command line, so strings are accepted for the boolean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vpmu_core.api import ConfigError, parse_bool

#: option name -> help text (shown by `vpmu modes`)
OPTION_HELP: dict[str, str] = {
    "switch_at": (
        "where the PMU context switch happens: run_loop (default, merged v5+: around the inner "
        "run loop, fastpath exits do not switch) | exit (RFC v1-v4: every VM-exit/entry) | "
        "vcpu_run (the debated alternative: around KVM_RUN, host perf is blind inside it)"
    ),
    "host_policy": (
        "host perf coexistence: rfc2 (default, merged: EBUSY/EOPNOTSUPP for exclude_guest=0 "
        "events) | rfc1 (RFC v1: such events go to ERROR at the first guest load and stay there)"
    ),
    "elide_writes": "skip counter WRMSRs at load when hardware already holds the value (v6 34/44): true (default) | false",
    "facilities": (
        "LBR and other facilities: off (default, merged kernel: LBR/PEBS disabled for mediated "
        "guests, v6 17/44-18/44) | passthrough (RFC design / issue 5: the facility's record MSRs "
        "pass through and its state is switched at the PMU boundary, Arch LBR by XSAVES/XRSTORS)"
    ),
    "upgrade_v5": (
        "model the unmerged 'KVM: x86/pmu: Upgrade vPMU version to 5' series: guests get the host's "
        "PMU version (v4/v5: GLOBAL_STATUS_SET, GLOBAL_INUSE, freeze bits) instead of mainline's v2 "
        "(kvm_init_pmu_capability, unchanged by the mediated merge): false (default) | true"
    ),
}
FACILITY_POLICIES = ("off", "passthrough")

PLACEMENTS = ("run_loop", "exit", "vcpu_run")
POLICIES = ("rfc2", "rfc1")


@dataclass(frozen=True)
class MediatedOptions:
    """Validated options (one object so the hot path reads plain attributes)."""

    switch_at: str = "run_loop"
    host_policy: str = "rfc2"
    elide_writes: bool = True
    facilities: str = "off"
    upgrade_v5: bool = False

    @classmethod
    def parse(cls, options: dict[str, Any]) -> MediatedOptions:
        unknown = sorted(set(options) - set(OPTION_HELP))
        if unknown:
            raise ConfigError("mode_options", f"unknown option(s) {unknown} for mode 'mediated'", sorted(OPTION_HELP))
        switch_at = str(options.get("switch_at", "run_loop"))
        if switch_at not in PLACEMENTS:
            raise ConfigError("mode_options.switch_at", f"unknown placement {switch_at!r}", ", ".join(PLACEMENTS))
        policy = str(options.get("host_policy", "rfc2"))
        if policy not in POLICIES:
            raise ConfigError("mode_options.host_policy", f"unknown policy {policy!r}", ", ".join(POLICIES))
        fac = str(options.get("facilities", "off"))
        if fac not in FACILITY_POLICIES:
            raise ConfigError("mode_options.facilities", f"unknown policy {fac!r}", ", ".join(FACILITY_POLICIES))
        return cls(
            switch_at,
            policy,
            parse_bool("mode_options.elide_writes", options.get("elide_writes", True)),
            fac,
            parse_bool("mode_options.upgrade_v5", options.get("upgrade_v5", False)),
        )
