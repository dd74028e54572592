"""The plugin API: the one module vendor, facility and mode plugins import from.

Everything a plugin needs is here; everything else in `vpmu_core` is internal and may move.
Users composing hosts use `vpmu_core` itself (DESIGN §5); plugin authors use this module
and docs/writing-plugins.md.

Records and hooks
    `hookimpl` (the marker; another project's marker registers nothing), `CpuModelSpec`,
    `FacilitySpec`, `ModeSpec` (what the registration hooks register; each may declare
    `costs=` its own cost fields, a `CostFields` subclass with one `CostField(default,
    description=...)` each, and `cost_presets=` its numbers per preset name).

Vendor side
    `PmuBase` (subclass it; its abstract methods are mandatory, see its docstring),
    `CounterBackend`, `Overflow`, `Pmc`, `FIXED_BASE` (fixed counter i has index 32+i),
    `sign_extend`, `Register` (declarative MSRs: write-1-to-clear, write-1-to-set, derived
    read-only via `compute`), `CounterWrite` (the write rule of `PmuBase.add_counter`:
    "masked", "checked", "legacy"), `CpuidTable` (+ `EAX`..`EDX`, `Regs`),
    `PmuCapabilities`, `CpuModel` (the protocol a model factory returns), `HwEvent`,
    `PerfDriver`, `RegisterPort`, `GENERIC_HW_EVENTS` (the generic perf event names a
    scenario may name; drivers may answer more, e.g. AMD's "stalled-cycles-frontend" and
    "-backend", and answer ENOENT for the ones their hardware lacks), `PerfEventAttr`,
    `EventState`, `GuestPmuConfig`, `Facility`, `FacilityState`.
Exact fast-forward of exits (`vpmu_fast_forward_rules`)
    `FastForwardRules`, `ExitClock`, `ExitGuestCycles`, `ExitConstant` (how an exit leaves
    the mode's fields that depend on where it lies).
Vendor-neutral helpers (docs/writing-plugins.md "Helpers every vendor gets")
    `entry_split` (the controls host-mode and guest-mode work count under), `fold_enables`
    (global enables into `count_host`/`count_guest`), `ALWAYS_ON`, `GlobalCtrlSplit` (the
    driver's live vs VM-entry-loaded global control), `clamp_guest` (the guest-config
    clamp), `parse_bool` / `parse_int` (model and mode options).
KVM rules both modes share
    `KvmPmuCaps`, `KVM_7_0` (what KVM 7.0 gives a guest: version 2, at most 3 fixed counters),
    `UPGRADE_V5_VERSION` (the unmerged "Upgrade vPMU version to 5" series, a mode option).

Counting
    `EventKind` (what a span counts; index into `Work.counts`), `N_KINDS`, `Work`,
    `EMULATED_INSTRUCTION` (an instruction the hypervisor emulated: 1 instruction, 0 guest
    cycles, as ground truth counts it: what `vpmu_instruction_retired` accrues),
    `ONE_INSTRUCTION` (an instruction the hardware executes: 1 instruction, 1 cycle),
    `KVM_COMMON_PMU_MSRS` (legacy PMU MSRs KVM's common code answers when no vPMU claims
    them).

Errors and utilities
    `GuestFault` / `gp(reason)` (the only way a guest sees #GP), `ConfigError` (bad user
    input: factories and option parsers), `PerfError` (errno of the perf API), `get_logger`
    (key=value on the stdlib logger, silent until an application configures logging), `derive_seed` (a stable
    sub-seed for anything random a plugin does: same seed, same report), `PerfEvent`,
    `OverflowHandler` (host perf events a mode creates).

What a mode is given at run time is documented in docs/writing-plugins.md ("The mode <->
physical PMU contract"): `vcpu.pmu`, `vcpu.cpu.pmu`, `vcpu.host.perf`, `vcpu.charge`, ...
"""

from __future__ import annotations

from vpmu_core.lazy import lazy_exports

#: typing.TYPE_CHECKING without importing typing; mypy treats any name TYPE_CHECKING as true
TYPE_CHECKING = False

#: public name -> the module that defines it: a plugin's `from vpmu_core.api import X`
#: imports only what X needs (PEP 562), so discovering plugins (`vpmu plugins`) does not
#: import the engine and the hypervisor
_EXPORTS = {
    "CostField": "vpmu_core.cost_fields",
    "CostFields": "vpmu_core.cost_fields",
    "ConfigError": "vpmu_core.errors",
    "GuestFault": "vpmu_core.errors",
    "PerfError": "vpmu_core.errors",
    "gp": "vpmu_core.errors",
    "N_KINDS": "vpmu_core.events",
    "EventKind": "vpmu_core.events",
    "Work": "vpmu_core.events",
    "GuestPmuConfig": "vpmu_core.hv.config",
    "ExitClock": "vpmu_core.hv.ff_rules",
    "ExitConstant": "vpmu_core.hv.ff_rules",
    "ExitGuestCycles": "vpmu_core.hv.ff_rules",
    "FastForwardRules": "vpmu_core.hv.ff_rules",
    "KVM_7_0": "vpmu_core.hv.kvm_caps",
    "UPGRADE_V5_VERSION": "vpmu_core.hv.kvm_caps",
    "KvmPmuCaps": "vpmu_core.hv.kvm_caps",
    "EMULATED_INSTRUCTION": "vpmu_core.events",
    "KVM_COMMON_PMU_MSRS": "vpmu_core.hv.kvm_caps",
    "ONE_INSTRUCTION": "vpmu_core.events",
    "CounterWrite": "vpmu_core.hw.counter",
    "EAX": "vpmu_core.hw.cpuid",
    "EBX": "vpmu_core.hw.cpuid",
    "ECX": "vpmu_core.hw.cpuid",
    "EDX": "vpmu_core.hw.cpuid",
    "CpuidTable": "vpmu_core.hw.cpuid",
    "Regs": "vpmu_core.hw.cpuid",
    "ALWAYS_ON": "vpmu_core.hw.enables",
    "entry_split": "vpmu_core.hw.enables",
    "fold_enables": "vpmu_core.hw.enables",
    "GlobalCtrlSplit": "vpmu_core.hw.entry_split",
    "Facility": "vpmu_core.hw.facility",
    "FacilityState": "vpmu_core.hw.facility",
    "clamp_guest": "vpmu_core.hw.guest_clamp",
    "CpuModel": "vpmu_core.hw.model",
    "PmuCapabilities": "vpmu_core.hw.model",
    "Register": "vpmu_core.hw.msr",
    "parse_bool": "vpmu_core.hw.options",
    "parse_int": "vpmu_core.hw.options",
    "FIXED_BASE": "vpmu_core.hw.pmc",
    "Pmc": "vpmu_core.hw.pmc",
    "sign_extend": "vpmu_core.hw.pmc",
    "CounterBackend": "vpmu_core.hw.pmu",
    "Overflow": "vpmu_core.hw.pmu",
    "PmuBase": "vpmu_core.hw.pmu",
    "get_logger": "vpmu_core.logs",
    "hookimpl": "vpmu_core.markers",
    "GENERIC_HW_EVENTS": "vpmu_core.perf.attr",
    "EventState": "vpmu_core.perf.attr",
    "PerfEventAttr": "vpmu_core.perf.attr",
    "HwEvent": "vpmu_core.perf.driver",
    "PerfDriver": "vpmu_core.perf.driver",
    "RegisterPort": "vpmu_core.perf.driver",
    "OverflowHandler": "vpmu_core.perf.event",
    "PerfEvent": "vpmu_core.perf.event",
    "CpuModelSpec": "vpmu_core.plugins.records",
    "FacilitySpec": "vpmu_core.plugins.records",
    "ModeSpec": "vpmu_core.plugins.records",
    "derive_seed": "vpmu_core.seeds",
}

if TYPE_CHECKING:
    from vpmu_core.cost_fields import CostField, CostFields
    from vpmu_core.errors import ConfigError, GuestFault, PerfError, gp
    from vpmu_core.events import EMULATED_INSTRUCTION, N_KINDS, ONE_INSTRUCTION, EventKind, Work
    from vpmu_core.hv.config import GuestPmuConfig
    from vpmu_core.hv.ff_rules import ExitClock, ExitConstant, ExitGuestCycles, FastForwardRules
    from vpmu_core.hv.kvm_caps import KVM_7_0, KVM_COMMON_PMU_MSRS, UPGRADE_V5_VERSION, KvmPmuCaps
    from vpmu_core.hw.counter import CounterWrite
    from vpmu_core.hw.cpuid import EAX, EBX, ECX, EDX, CpuidTable, Regs
    from vpmu_core.hw.enables import ALWAYS_ON, entry_split, fold_enables
    from vpmu_core.hw.entry_split import GlobalCtrlSplit
    from vpmu_core.hw.facility import Facility, FacilityState
    from vpmu_core.hw.guest_clamp import clamp_guest
    from vpmu_core.hw.model import CpuModel, PmuCapabilities
    from vpmu_core.hw.msr import Register
    from vpmu_core.hw.options import parse_bool, parse_int
    from vpmu_core.hw.pmc import FIXED_BASE, Pmc, sign_extend
    from vpmu_core.hw.pmu import CounterBackend, Overflow, PmuBase
    from vpmu_core.logs import get_logger
    from vpmu_core.markers import hookimpl
    from vpmu_core.perf.attr import GENERIC_HW_EVENTS, EventState, PerfEventAttr
    from vpmu_core.perf.driver import HwEvent, PerfDriver, RegisterPort
    from vpmu_core.perf.event import OverflowHandler, PerfEvent
    from vpmu_core.plugins.records import CpuModelSpec, FacilitySpec, ModeSpec
    from vpmu_core.seeds import derive_seed

__all__ = [
    "ALWAYS_ON",
    "ConfigError",
    "CostField",
    "CostFields",
    "CounterBackend",
    "CounterWrite",
    "CpuModel",
    "CpuModelSpec",
    "CpuidTable",
    "EAX",
    "EBX",
    "ECX",
    "EDX",
    "EMULATED_INSTRUCTION",
    "EventKind",
    "EventState",
    "ExitClock",
    "ExitConstant",
    "ExitGuestCycles",
    "FIXED_BASE",
    "Facility",
    "FacilitySpec",
    "FacilityState",
    "FastForwardRules",
    "GENERIC_HW_EVENTS",
    "GlobalCtrlSplit",
    "GuestFault",
    "GuestPmuConfig",
    "HwEvent",
    "KVM_7_0",
    "KVM_COMMON_PMU_MSRS",
    "KvmPmuCaps",
    "ModeSpec",
    "N_KINDS",
    "ONE_INSTRUCTION",
    "Overflow",
    "OverflowHandler",
    "PerfDriver",
    "PerfError",
    "PerfEvent",
    "PerfEventAttr",
    "Pmc",
    "PmuBase",
    "PmuCapabilities",
    "Register",
    "RegisterPort",
    "Regs",
    "UPGRADE_V5_VERSION",
    "Work",
    "clamp_guest",
    "derive_seed",
    "entry_split",
    "fold_enables",
    "get_logger",
    "gp",
    "hookimpl",
    "parse_bool",
    "parse_int",
    "sign_extend",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
