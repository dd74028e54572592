"""The concrete Intel CPU models and the `CpuModel` object the core composes with.

Model data (counters, widths, CPUID signature, constraint tables, LBR facility data) is
kept as plain records here; the register semantics live in `pmu.py`, CPUID in `cpuid.py`,
the perf driver in `driver.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vpmu_core.api import (
    ConfigError,
    CpuidTable,
    EventKind,
    GuestPmuConfig,
    PmuCapabilities,
    clamp_guest,
    parse_bool,
)
from vpmu_intel_arch.cpuid import build_cpuid
from vpmu_intel_arch.driver import IntelPerfDriver
from vpmu_intel_arch.events import ARCH_EVENTS, ICL_CONSTRAINTS, SKL_CONSTRAINTS, SPR_CONSTRAINTS, Constraint
from vpmu_intel_arch.layout import PERF_CAP_FW_WRITE, PERF_CAP_LBR_FMT, PERF_CAP_PERF_METRICS, PmuLayout
from vpmu_intel_arch.pmu import IntelPmu
from vpmu_intel_arch.registry import COST_PRESETS as COST_PRESETS

#: Legacy (model-specific) LBR of Skylake and Ice Lake: `intel_pmu_lbr_init_skl`
#: (arch/x86/events/intel/lbr.c), 32 entries, LBR_FORMAT_INFO (5) with LBR_INFO MSRs.
LEGACY_LBR_SKL: dict[str, Any] = {
    "depth": 32,
    "format": 5,
    "tos": 0x1C9,
    "select": 0x1C8,
    "from_base": 0x680,
    "to_base": 0x6C0,
    "info_base": 0xDC0,
    "call_stack": True,
}

#: Architectural LBR of Sapphire Rapids (SDM Vol. 3B ch. 18.1; CPUID.1CH). Depths 8..32,
#: XSAVE component 15 whose size is 0x28 header + 24 bytes per entry (struct arch_lbr_state).
ARCH_LBR_SPR: dict[str, Any] = {
    "depths": [8, 16, 24, 32],
    "cpl_filter": True,
    "branch_filter": True,
    "call_stack": True,
    "record_caps": 0x7,  # CPUID.1CH:ECX mispredict, timed LBR, branch type
    "ctl": 0x14CE,
    "depth_msr": 0x14CF,
    "from_base": 0x1500,
    "to_base": 0x1600,
    "info_base": 0x1200,
    "xsave_component": 15,
    "xsave_size": 0x28 + 24 * 32,
}


@dataclass(frozen=True)
class ModelData:
    """The facts of one Intel CPU as the model needs them: the public way to add an Intel
    core. `IntelCpuModel(data)` turns it into a CPU model (register model `IntelPmu`, CPUID,
    the `IntelPerfDriver` and KVM's guest clamp all derive from it); see
    `vpmu_intel_arch/gracemont.py` for a complete model in ~40 lines."""

    name: str
    description: str
    signature: int  # CPUID.1:EAX family/model/stepping
    max_leaf: int
    version: int
    n_gp: int
    n_fixed: int
    width: int
    #: CPUID.0AH:EAX[31:24]: architectural events enumerated (and counted) by this CPU
    arch_events_len: int
    constraints: tuple[Constraint, ...]
    perf_metrics: bool
    anythread: bool
    features: dict[str, Any] = field(default_factory=dict)
    #: PERF_CAPABILITIES[13]: IA32_A_PMCx full-width counter writes (SDM Vol. 3B 20.2.6)
    full_width_writes: bool = True
    #: the architectural event table in CPUID.0AH:EBX order (the first `arch_events_len`
    #: are what a GP counter counts)
    events: tuple[tuple[int, EventKind], ...] = ARCH_EVENTS

    @property
    def perf_caps(self) -> int:
        """IA32_PERF_CAPABILITIES as modelled: LBR format, full-width writes, perf metrics.
        PEBS fields are left 0 because PEBS is not modelled (a guest must not try it)."""
        v = PERF_CAP_FW_WRITE if self.full_width_writes else 0
        lbr = self.features.get("lbr")
        if lbr:
            v |= lbr["format"] & PERF_CAP_LBR_FMT
        if self.perf_metrics:
            v |= PERF_CAP_PERF_METRICS
        return v


def _skylake(n_gp: int) -> ModelData:
    return ModelData(
        name="intel/skylake",
        description=f"Skylake client (PMU v4, {n_gp} GP + 3 fixed, 48-bit, legacy LBR 32)",
        signature=0x506E3,
        max_leaf=0x16,
        version=4,
        n_gp=n_gp,
        n_fixed=3,
        width=48,
        arch_events_len=7,
        constraints=SKL_CONSTRAINTS,
        perf_metrics=False,
        anythread=True,  # v3/v4 AnyThread (SDM 20.2.3)
        features={"lbr": dict(LEGACY_LBR_SKL)},
    )


ICELAKE = ModelData(
    name="intel/icelake",
    description="Ice Lake client (PMU v5, 8 GP + 4 fixed incl. SLOTS, perf metrics, legacy LBR 32)",
    signature=0x706E5,
    max_leaf=0x1B,
    version=5,
    n_gp=8,
    n_fixed=4,
    width=48,
    arch_events_len=8,
    constraints=ICL_CONSTRAINTS,
    perf_metrics=True,
    anythread=False,  # v5 deprecates AnyThread (CPUID.0AH:EDX[15], SDM 20.2.5)
    features={"lbr": dict(LEGACY_LBR_SKL)},
)

SAPPHIRERAPIDS = ModelData(
    name="intel/sapphirerapids",
    description="Sapphire Rapids (PMU v5, 8 GP + 4 fixed, perf metrics, Arch LBR)",
    signature=0x806F8,
    max_leaf=0x20,
    version=5,
    n_gp=8,
    n_fixed=4,
    width=48,
    arch_events_len=8,
    constraints=SPR_CONSTRAINTS,
    perf_metrics=True,
    anythread=False,
    features={"arch_lbr": dict(ARCH_LBR_SPR)},
)


class IntelCpuModel:
    """A composed Intel CPU model (implements `vpmu_core.hw.model.CpuModel`)."""

    vendor = "intel"
    freq_hz = 3_000_000_000
    cost_preset = "intel"

    def __init__(self, data: ModelData) -> None:
        self.data = data
        self.name = data.name
        lbr = "lbr" in data.features or "arch_lbr" in data.features
        self.caps = PmuCapabilities(
            version=data.version,
            gp_counters=data.n_gp,
            fixed_counters=data.n_fixed,
            gp_width=data.width,
            fixed_width=data.width,
            full_width_writes=bool(data.perf_caps & PERF_CAP_FW_WRITE),
            global_regs=data.version >= 2,
            lbr=lbr,
        )
        #: facility data for the LBR plugins ("lbr" legacy or "arch_lbr")
        self.features: dict[str, Any] = {k: dict(v) for k, v in data.features.items()}
        self.constraints = data.constraints
        self._counted = {enc: kind for enc, kind in data.events[: data.arch_events_len]}
        # Fixed-only pseudo encodings (event code 0) are not GP events, so not in `counted`.
        self.host_layout = PmuLayout(
            version=data.version,
            n_gp=data.n_gp,
            n_fixed=data.n_fixed,
            gp_width=data.width,
            fixed_width=data.width,
            full_width=self.caps.full_width_writes,
            pdcm=True,
            perf_caps=data.perf_caps,
            perf_metrics=data.perf_metrics,
            anythread=data.anythread,
            arch_events_len=data.arch_events_len,
            counted=self._counted,
            lbr="lbr" in data.features,
            arch_lbr="arch_lbr" in data.features,
            guest=False,
        )

    # ---- guest configuration ----------------------------------------------------------------
    def resolve_guest(self, requested: GuestPmuConfig) -> GuestPmuConfig:
        """Fill Nones from the host and clamp like KVM `intel_pmu_refresh`: version and counts
        above the host's are reduced to the host's; v1 has no fixed counters; version 0 has
        no PMU. Contradictions the user spelled out raise ConfigError."""
        return clamp_guest(requested, self.caps, self.name)

    def guest_layout(self, guest: GuestPmuConfig) -> PmuLayout:
        """The guest-visible layout (KVM): no AnyThread (reserved for guests), no perf
        metrics (vmx_get_perf_capabilities keeps only FW_WRITE, LBR format, PEBS)."""
        cfg = self.resolve_guest(guest)
        assert cfg.version is not None and cfg.gp_counters is not None and cfg.fixed_counters is not None
        legacy_lbr = bool(cfg.lbr) and "lbr" in self.data.features
        caps = PERF_CAP_FW_WRITE if cfg.full_width_writes else 0
        if legacy_lbr:
            caps |= self.data.perf_caps & PERF_CAP_LBR_FMT
        return PmuLayout(
            version=cfg.version,
            n_gp=cfg.gp_counters,
            n_fixed=cfg.fixed_counters,
            gp_width=self.data.width,
            fixed_width=self.data.width,
            full_width=bool(cfg.full_width_writes),
            pdcm=cfg.version > 0,
            perf_caps=caps,
            perf_metrics=False,
            anythread=False,
            arch_events_len=self.data.arch_events_len,
            unavailable_events=cfg.unavailable_events or 0,
            counted=self._counted,
            lbr=legacy_lbr,
            arch_lbr=bool(cfg.lbr) and "arch_lbr" in self.data.features,
            guest=True,
        )

    # ---- CpuModel protocol -------------------------------------------------------------------
    def layout(self, guest: GuestPmuConfig | None = None) -> PmuLayout:
        return self.host_layout if guest is None else self.guest_layout(guest)

    def make_pmu(self, guest: GuestPmuConfig | None = None) -> IntelPmu:
        return IntelPmu(self.layout(guest))

    def make_driver(self) -> IntelPerfDriver:
        return IntelPerfDriver(self.constraints, self.features, self._counted)

    def cpuid_table(self, guest: GuestPmuConfig | None = None) -> CpuidTable:
        return build_cpuid(self.layout(guest), self.data.signature, self.data.max_leaf, self.features)

    def mediated_pmu_missing(self) -> list[str]:
        """What this host lacks for a mediated vPMU: KVM's vendor op
        `intel_pmu_is_mediated_pmu_supported()` (vmx/pmu_intel.c) requires PMU v4+ (for
        GLOBAL_STATUS_SET) and full-width writes (to load 48-bit counter values)."""
        caps = self.caps
        missing = []
        if caps.version < 4:
            missing.append(f"architectural PMU version 4 (GLOBAL_STATUS_SET), host has v{caps.version}")
        if not caps.full_width_writes:
            missing.append("full-width counter writes (PERF_CAPABILITIES.FW_WRITE)")
        return missing

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vendor": self.vendor,
            "description": self.data.description,
            "version": self.caps.version,
            "gp_counters": self.caps.gp_counters,
            "fixed_counters": self.caps.fixed_counters,
            "width": self.caps.gp_width,
            "perf_metrics": self.data.perf_metrics,
            "features": sorted(self.features),
        }


def no_options(name: str, options: dict[str, Any], allowed: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"{name} options", f"unknown option(s) {unknown}", allowed=list(allowed) or "none")


def make_skylake(options: dict[str, Any] | None = None) -> IntelCpuModel:
    """Skylake: 4 GP counters per thread with SMT (default), 8 without (SDM Vol. 3B 20.3.8:
    the eight counters of a core are split between the two threads when HT is on)."""
    options = dict(options or {})
    no_options("intel/skylake", options, ("smt",))
    smt = parse_bool("intel/skylake.smt", options.get("smt", True))
    return IntelCpuModel(_skylake(4 if smt else 8))


def make_icelake(options: dict[str, Any] | None = None) -> IntelCpuModel:
    no_options("intel/icelake", dict(options or {}))
    return IntelCpuModel(ICELAKE)


def make_sapphirerapids(options: dict[str, Any] | None = None) -> IntelCpuModel:
    no_options("intel/sapphirerapids", dict(options or {}))
    return IntelCpuModel(SAPPHIRERAPIDS)


__all__ = [
    "IntelCpuModel",
    "ModelData",
    "make_icelake",
    "make_sapphirerapids",
    "make_skylake",
    "no_options",
]
