"""The guest-config clamp: what a requested `GuestPmuConfig` becomes on a host.

KVM's refresh (`kvm_pmu_refresh` -> `intel_pmu_refresh` / `amd_pmu_refresh`) takes the
guest CPUID userspace set and reduces it to what the host has: a version or a counter
count above the host's becomes the host's, and a PMU without a version has no counters.
`clamp_guest` is that rule with the Nones filled from the host; a vendor with its own
counting rules (AMD: the count follows PerfCtrExtCore without PerfMonV2) applies them to
the result. Contradictions the user spelled out (counters on a version-0 PMU, fixed
counters below `fixed_since`, a feature the host lacks) raise `ConfigError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vpmu_core.errors import ConfigError

if TYPE_CHECKING:
    from vpmu_core.hv.config import GuestPmuConfig
    from vpmu_core.hw.model import PmuCapabilities


def clamp_guest(
    requested: GuestPmuConfig, host: PmuCapabilities, model: str, *, fixed_since: int = 2
) -> GuestPmuConfig:
    """The resolved guest config (a `GuestPmuConfig`, every PMU field set): see the module
    docstring. `fixed_since` is the first version with fixed counters (Intel v2, SDM Vol.
    3B 20.2.2)."""
    version = host.version if requested.version is None else min(requested.version, host.version)
    gp_n = host.gp_counters if requested.gp_counters is None else min(requested.gp_counters, host.gp_counters)
    fixed_n = host.fixed_counters if requested.fixed_counters is None else requested.fixed_counters
    fixed_n = min(fixed_n, host.fixed_counters)
    if version == 0:
        if requested.gp_counters or requested.fixed_counters:
            raise ConfigError("pmu.version", "version 0 means no PMU, but counters were requested")
        gp_n = fixed_n = 0
    elif version < fixed_since:
        if requested.fixed_counters:
            raise ConfigError("pmu.fixed_counters", f"PMU v{version} has no fixed counters", allowed=0)
        fixed_n = 0
    fw = host.full_width_writes if requested.full_width_writes is None else requested.full_width_writes
    if fw and not host.full_width_writes:
        raise ConfigError("pmu.full_width_writes", f"{model} has no full-width writes", allowed=False)
    lbr = host.lbr if requested.lbr is None else requested.lbr
    if lbr and not host.lbr:
        raise ConfigError("pmu.lbr", f"{model} has no LBR", allowed=False)
    if version == 0:
        fw = lbr = False
    return requested.model_copy(
        update={
            "version": version,
            "gp_counters": gp_n,
            "fixed_counters": fixed_n,
            "full_width_writes": fw,
            "lbr": lbr,
            "unavailable_events": requested.unavailable_events or 0,
            "facility_options": dict(requested.facility_options),
        }
    )
