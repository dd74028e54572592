"""The guest side shared by the peer suites (tests/peer/test_*.py), replayed through the public
API (DESIGN §5).

Each suite replays one real test program, check by check, as its guest code does it: the guest
discovers its PMU through CPUID (and PERF_CAPABILITIES), programs counters with `vcpu.wrmsr`,
runs the measured loop as `vcpu.execute(Work(...))`, reads with `vcpu.rdmsr`/`vcpu.rdpmc`, takes
PMIs through the x2APIC LVTPC (0x834) into `vcpu.pmis`, and expects #GP as `GuestFault` vector
13. Every check runs under both modes.

Where a suite checks a range, the range is asserted as the suite does it; where the counting
window of DESIGN §5 makes the value exact, the exact value is asserted too (named `exact` in
the report lines). Here: the MSR numbers and bits the suites use (Linux msr-index.h), building
a vCPU, the fault helper, kvm-unit-tests `report()`, and the selftests' CPUID property readers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import vpmu_core as vpmu

MODES = ("emulated", "mediated")
GP_VECTOR = 13

# MSRs (Linux msr-index.h; facts x86-pmu-registers.md §1.4, §5.2)
MSR_IA32_PERFCTR0 = 0xC1
MSR_IA32_PMC0 = 0x4C1
MSR_P6_EVNTSEL0 = 0x186
MSR_CORE_PERF_FIXED_CTR0 = 0x309
MSR_IA32_PERF_CAPABILITIES = 0x345
MSR_CORE_PERF_FIXED_CTR_CTRL = 0x38D
MSR_CORE_PERF_GLOBAL_STATUS = 0x38E
MSR_CORE_PERF_GLOBAL_CTRL = 0x38F
MSR_CORE_PERF_GLOBAL_OVF_CTRL = 0x390
MSR_IA32_DEBUGCTLMSR = 0x1D9
MSR_LBR_SELECT = 0x1C8
MSR_LBR_TOS = 0x1C9
MSR_LBR_CORE_FROM, MSR_LBR_CORE_TO = 0x40, 0x60
MSR_LBR_NHM_FROM, MSR_LBR_NHM_TO = 0x680, 0x6C0
MSR_K7_EVNTSEL0 = 0xC0010000
MSR_K7_PERFCTR0 = 0xC0010004
MSR_F15H_PERF_CTL0 = 0xC0010200
MSR_F15H_PERF_CTR0 = 0xC0010201
MSR_AMD64_PERF_CNTR_GLOBAL_STATUS = 0xC0000300
MSR_AMD64_PERF_CNTR_GLOBAL_CTL = 0xC0000301
MSR_AMD64_PERF_CNTR_GLOBAL_STATUS_CLR = 0xC0000302
APIC_LVTPC = 0x834  # x2APIC
PMI_VECTOR = 32  # kvm-unit-tests lib/x86/pmu.h

EVNTSEL_USR = 1 << 16
EVNTSEL_OS = 1 << 17
EVNTSEL_INT = 1 << 20
EVNTSEL_EN = 1 << 22
EVNTSEL_CMASK_SHIFT = 24
PMU_CAP_FW_WRITES = 1 << 13
PMU_CAP_LBR_FMT = 0x3F
INTEL_RDPMC_FIXED = 1 << 30
INTEL_RDPMC_FAST = 1 << 31
FIXED_CNT_INDEX = 32

INTEL_VENDOR_EBX = 0x756E6547  # "Genu"


def make_vcpu(
    cpu: str,
    mode: str,
    pmu: vpmu.GuestPmuConfig | None = None,
    facilities: tuple[str, ...] = (),
    mode_options: dict[str, Any] | None = None,
    vcpus: int = 1,
    seed: int = 0,
) -> Any:
    """One VM on host CPU 0 with the default (realistic) background exit profile: the
    counting window holds whatever exits happen in between (DESIGN §5)."""
    host = vpmu.compose(cpu=cpu, mode=mode, facilities=facilities, cpus=1, seed=seed, mode_options=mode_options or {})
    vm = host.create_vm(vcpus=vcpus, pin=[0] * vcpus, pmu=pmu or vpmu.GuestPmuConfig())
    return vm.vcpus[0]


def make_vcpu_or_skip(*args: Any, **kw: Any) -> Any:
    """make_vcpu, skipping compositions KVM refuses (the mediated vPMU needs Intel v4+ with
    full-width writes or AMD PerfMonV2)."""
    try:
        return make_vcpu(*args, **kw)
    except vpmu.ConfigError as e:
        pytest.skip(str(e))


def faults(fn: Callable[..., Any], *args: Any, out: list[int] | None = None) -> int:
    """kvm-unit-tests test_for_exception / selftests *_safe: the vector, 0 if none (the
    result, if any, appended to `out`)."""
    try:
        r = fn(*args)
    except vpmu.GuestFault as e:
        return e.vector
    if out is not None:
        out.append(r)
    return 0


def u64(x: int) -> int:
    return x & ((1 << 64) - 1)


@dataclass
class Report:
    """kvm-unit-tests `report()`: every check keeps its name and outcome."""

    lines: list[tuple[str, bool, str]] = field(default_factory=list)
    prefix: list[str] = field(default_factory=list)

    def __call__(self, ok: bool, name: str, detail: str = "") -> None:
        self.lines.append(("/".join([*self.prefix, name]), bool(ok), detail))

    def failures(self, start: str = "") -> list[tuple[str, str]]:
        return [(n, d) for n, ok, d in self.lines if not ok and n.startswith(start)]


def this_cpu_property_pmu(v: Any) -> dict[str, int]:
    eax, ebx, ecx, edx = v.cpuid(0xA, 0)
    return {
        "version": eax & 0xFF,
        "nr_gp": (eax >> 8) & 0xFF,
        "ebx_len": (eax >> 24) & 0xFF,
        "events_mask": ebx,
        "fixed_bitmask": ecx,
        "nr_fixed": edx & 0x1F,
    }


def host_facts(cpu: str) -> tuple[int, int, int, int]:
    """What KVM supports on this host (kvm_cpu_property): version, nr GP, nr fixed, and
    hardware_pmu_arch_events (the host's available architectural events)."""
    host = vpmu.compose(cpu=cpu, mode="emulated", cpus=1, seed=0)
    p = this_cpu_property_pmu(host.create_vm(vcpus=1, pin=[0]).vcpus[0])
    hw = ~p["events_mask"] & ((1 << p["ebx_len"]) - 1) & 0xFF
    return p["version"], p["nr_gp"], p["nr_fixed"], hw


SEL_CPUS = ("intel/icelake", "intel/skylake")
