"""The mode's options as `vpmu modes` lists them (name -> help text).

A leaf module: registering the mode (`vpmu plugins`) reads these without importing the mode
itself (`mode.py`, which validates them)."""

from __future__ import annotations

OPTIONS: dict[str, str] = {
    "lazy_release": "release idle perf events at vCPU sched-in (kvm_pmu_cleanup); default true",
    "upgrade_v5": (
        "model the unmerged 'KVM: x86/pmu: Upgrade vPMU version to 5' series: guests get the host's "
        "PMU version (v4/v5: GLOBAL_STATUS_SET, GLOBAL_INUSE, freeze bits) instead of mainline's v2; "
        "default false"
    ),
}
