"""The scenario file schema (DESIGN §7): pydantic v2 models, `extra="forbid"` everywhere.

A scenario names the composition (CPU model, facilities, mode and their options), the host
(CPUs, tasks and their work, host perf sessions), the VMs (vCPUs, pinning, guest PMU,
exit profile, event filter, guest work and guest perf sessions), the duration, the seed
and cost overrides. `vpmu schema` prints `Scenario.model_json_schema()`.

Times are simulated nanoseconds from the start of the run. Every timed action (queue
work, open/enable an event, disable it) happens exactly at its time; the runner advances
the clock from one action time to the next (see `vpmu_core/scenario/runner.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from vpmu_core.costs import CostModel
from vpmu_core.engine.exits import DEFAULT_REASONS, FASTPATH_REASONS, ExitProfile
from vpmu_core.perf.attr import BRANCH_SAMPLE_TYPES, GENERIC_HW_EVENTS

PERF_CLASSES = ("cpu_pinned", "task_pinned", "cpu_flexible", "task_flexible")

#: KVM_MAX_VCPUS on x86 (arch/x86/include/asm/kvm_host.h): the most vCPUs one VM can have
MAX_VCPUS_PER_VM = 1024
#: the most vCPUs of all VMs of a scenario: memory is the limit (about 150 KB and 25 ms of
#: set-up per vCPU; 4096 vCPUs need about 0.6 GB)
MAX_VCPUS_TOTAL = 4096
#: bounds of a model's `freq_hz` option (core clock): 1 MHz .. 20 GHz
FREQ_HZ_MIN, FREQ_HZ_MAX = 1_000_000, 20_000_000_000
#: exit reasons a background exit profile may name (`exits.reasons`), KVM's names for the
#: VMX/SVM basic exit reasons the model handles (arch/x86/kvm/vmx/vmx.c kvm_vmx_exit_handlers);
#: the fastpath ones (engine/exits.py FASTPATH_REASONS) are among them
EXIT_REASONS = tuple(
    sorted(
        set(DEFAULT_REASONS)
        | set(FASTPATH_REASONS)
        | {
            "apic_access",
            "apic_write",
            "cr_access",
            "dr_access",
            "ept_misconfig",
            "eoi_induced",
            "exception_nmi",
            "interrupt_window",
            "invlpg",
            "msr_read",
            "nmi_window",
            "pause_instruction",
            "rdpmc",
            "rdtsc",
            "rdtscp",
            "vmcall",
            "wbinvd",
            "xsetbv",
        }
    )
)
#: facilities that give a guest an LBR (`pmu.lbr: true` needs one of them)
LBR_FACILITIES = ("lbr", "arch_lbr")

NonNegInt = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _cost_overrides_model() -> type[BaseModel]:
    """CostModel with every field optional: a scenario overrides single fields. The fields
    plugins declare (a mode's own) are extra keys here, checked against the installed
    plugins when the scenario is validated (`loader.validate`) and the composed host's at
    compose; `preset` picks a cost preset by name (default: the CPU model's)."""
    fields: dict[str, Any] = {
        "preset": (str | None, Field(None, description="cost preset, e.g. intel or amd (default: the CPU model's)"))
    }
    for name, f in CostModel.model_fields.items():
        # a negative cost would make overhead (and time) run backwards
        assert f.annotation is not None, f"CostModel.{name} has a type"
        fields[name] = (f.annotation | None, Field(None, ge=0, description=f.description))
    return create_model(
        "CostOverrides",
        __config__=ConfigDict(
            extra="allow",
            # the extra keys are plugins' cost fields: non-negative numbers (checked by name at validate)
            json_schema_extra={"additionalProperties": {"type": "number", "minimum": 0}},
        ),
        __doc__="Cost model overrides (host cycles).",
        **fields,
    )


if TYPE_CHECKING:
    # a model built by create_model() is a value to mypy, not a type: check it as a BaseModel
    CostOverrides = BaseModel
else:
    CostOverrides = _cost_overrides_model()


class WorkSpec(_Strict):
    """A span of execution with its exact event counts (`vpmu.Work`). `cycles` defaults to
    `instructions`, `ref_cycles` to `cycles`, `lbr_inserts` to `branches`."""

    instructions: NonNegInt = 0
    cycles: NonNegInt | None = None
    ref_cycles: NonNegInt | None = None
    branches: NonNegInt = 0
    branch_misses: NonNegInt = 0
    llc_references: NonNegInt = 0
    llc_misses: NonNegInt = 0
    topdown_slots: NonNegInt = 0
    topdown_be_bound: NonNegInt = 0
    topdown_bad_spec: NonNegInt = 0
    topdown_fe_bound: NonNegInt = 0
    topdown_retiring: NonNegInt = 0
    lbr_inserts: NonNegInt | None = None
    cpl: Literal[0, 3] = Field(0, description="0 = kernel, 3 = user")

    def build(self) -> Any:
        from vpmu_core.events import Work

        return Work(**self.model_dump())


class _Timed(_Strict):
    """When work is queued: at `at_ns`, `repeat` times, every `every_ns` (0: all at once)."""

    work: WorkSpec
    at_ns: NonNegInt = 0
    repeat: int = Field(1, ge=1, le=100_000)
    every_ns: NonNegInt = 0


class HostTask(_Timed):
    """A host task (thread) pinned to a host CPU, running `work`."""

    name: str = Field(min_length=1)
    cpu: NonNegInt | None = Field(None, description="host CPU; default: the least loaded")


EventRef = Annotated[
    int | str,
    Field(
        description="a generic hardware event name ("
        + ", ".join(GENERIC_HW_EVENTS)
        + ") or a raw event-select encoding (int, e.g. 0x00c0)"
    ),
]


class _Session(_Strict):
    name: str = Field(min_length=1, description="shown in reports, e.g. 'nmi_watchdog'")
    events: list[EventRef] = Field(min_length=1)
    group: bool = Field(False, description="open the events as one group (the first is the leader)")
    exclude_user: bool = False
    exclude_kernel: bool = False
    sample_period: NonNegInt = 0
    branch_sample_type: list[Literal[BRANCH_SAMPLE_TYPES]] = Field(default_factory=list)  # type: ignore[valid-type]
    start_ns: NonNegInt = Field(0, description="perf_event_open + enable at this time")
    stop_ns: NonNegInt | None = Field(None, description="disable at this time (None: runs to the end)")

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[int | str]) -> list[int | str]:
        for e in v:
            if isinstance(e, str) and e not in GENERIC_HW_EVENTS:
                raise ValueError(
                    f"unknown event {e!r} (allowed: {', '.join(GENERIC_HW_EVENTS)}, or a raw int like 0x00c0)"
                )
            if isinstance(e, int) and e < 0:
                raise ValueError(f"raw event {e} must be >= 0")
        return v

    @model_validator(mode="after")
    def _window(self) -> _Session:
        if self.stop_ns is not None and self.stop_ns < self.start_ns:
            raise ValueError(f"stop_ns ({self.stop_ns}) is before start_ns ({self.start_ns})")
        return self


class HostPerfSession(_Session):
    """Host perf events: the scheduling class decides pinned and per-CPU vs per-task."""

    klass: Literal[PERF_CLASSES] = Field("cpu_flexible", alias="class")  # type: ignore[valid-type]
    cpu: NonNegInt | list[NonNegInt] | Literal["all"] | None = Field(
        None, description="per-CPU classes: a CPU, a list or 'all'; per-task classes: optional CPU filter"
    )
    task: str | None = Field(None, description="per-task classes: a host task name or a vCPU ('vm0/vcpu0')")
    exclude_guest: bool = False
    exclude_host: bool = False

    @model_validator(mode="after")
    def _target(self) -> HostPerfSession:
        if self.klass.startswith("cpu_"):
            if self.cpu is None:
                raise ValueError(f"class {self.klass} needs 'cpu' (a CPU index, a list or 'all')")
            if self.task is not None:
                raise ValueError(
                    f"class {self.klass} is per-CPU: 'task' is not allowed (use task_pinned/task_flexible)"
                )
        else:
            if self.task is None:
                raise ValueError(f"class {self.klass} needs 'task' (a host task name or a vCPU name)")
            if isinstance(self.cpu, list) or self.cpu == "all":
                raise ValueError("per-task events take at most one CPU filter")
        return self

    @property
    def pinned(self) -> bool:
        return self.klass.endswith("_pinned")


class GuestPerfSession(_Session):
    """Guest perf events on the virtual PMU (per-vCPU events, as `perf stat -a` in the guest)."""

    vcpu: NonNegInt | list[NonNegInt] | Literal["all"] = "all"
    pinned: bool = False


class EventFilterSpec(_Strict):
    """KVM_SET_PMU_EVENT_FILTER."""

    action: Literal["allow", "deny"]
    events: list[NonNegInt] = Field(default_factory=list, description="eventsel encodings (or masked entries)")
    fixed_counter_bitmap: NonNegInt = 0
    masked: bool = False


class GuestMsrWrite(_Strict):
    """A guest kernel WRMSR at a point in time (a driver step the guest takes: enable LBR,
    pick an LBR depth, program a counter by hand). A #GP is recorded, not fatal."""

    at_ns: NonNegInt = 0
    vcpu: NonNegInt | Literal["all"] = "all"
    msr: NonNegInt = Field(description="MSR index (hex allowed in YAML: 0x14ce)")
    value: NonNegInt = Field(description="value (must fit 64 bits)")


class VcpuWork(_Timed):
    """Guest work for one vCPU (or every vCPU)."""

    vcpu: NonNegInt | Literal["all"] = "all"


class GuestPmuSpec(_Strict):
    """`vpmu.GuestPmuConfig` (None = as the host model)."""

    version: NonNegInt | None = None
    gp_counters: NonNegInt | None = None
    fixed_counters: NonNegInt | None = None
    full_width_writes: bool | None = None
    lbr: bool | None = None
    unavailable_events: NonNegInt | None = Field(None, description="Intel CPUID.0AH:EBX the guest sees")
    facility_options: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ExitSpec(_Strict):
    """`vpmu.ExitProfile`: background VM-exits (rate per second, fastpath and userspace shares,
    reason weights)."""

    rate_per_s: float | None = Field(None, ge=0)
    fastpath_share: float | None = Field(None, ge=0, le=1)
    userspace_share: float | None = Field(None, ge=0, le=1)
    reasons: dict[str, Annotated[float, Field(ge=0)]] | None = Field(
        None, description="reason -> weight; reasons: " + ", ".join(EXIT_REASONS)
    )

    @field_validator("reasons")
    @classmethod
    def _reasons(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        unknown = sorted(set(v or {}) - set(EXIT_REASONS))
        if unknown:
            raise ValueError(f"unknown exit reason(s) {unknown} (allowed: {', '.join(EXIT_REASONS)})")
        return v

    def build(self) -> ExitProfile:
        return ExitProfile(**self.model_dump(exclude_none=True))

    @model_validator(mode="after")
    def _check(self) -> ExitSpec:
        self.build()  # ExitProfile's own checks (shares add up, weights)
        return self


class VmSpec(_Strict):
    name: str = Field(min_length=1)
    vcpus: int = Field(1, ge=1, le=MAX_VCPUS_PER_VM, description=f"at most {MAX_VCPUS_PER_VM} (KVM_MAX_VCPUS)")
    pin: list[NonNegInt] | None = Field(None, description="host CPU of each vCPU")
    pmu: GuestPmuSpec = Field(default_factory=GuestPmuSpec)
    exits: ExitSpec = Field(default_factory=ExitSpec)
    event_filter: EventFilterSpec | None = None
    work: list[VcpuWork] = Field(default_factory=list)
    perf: list[GuestPerfSession] = Field(default_factory=list)
    msrs: list[GuestMsrWrite] = Field(default_factory=list, description="guest WRMSRs at points in time")
    start_ns: NonNegInt = Field(0, description="create the VM at this time (KVM_CREATE_VM + KVM_CREATE_VCPU)")
    destroy_ns: NonNegInt | None = Field(
        None, description="destroy the VM at this time (vm.destroy(); None: it lives to the end)"
    )

    @model_validator(mode="after")
    def _check(self) -> VmSpec:
        if self.destroy_ns is not None and self.destroy_ns <= self.start_ns:
            raise ValueError(f"destroy_ns ({self.destroy_ns}) must be after start_ns ({self.start_ns})")
        end = self.destroy_ns
        timed = [(f"work[{i}].at_ns", w.at_ns) for i, w in enumerate(self.work)]
        timed += [(f"msrs[{i}].at_ns", m.at_ns) for i, m in enumerate(self.msrs)]
        timed += [(f"perf[{i}].start_ns", p.start_ns) for i, p in enumerate(self.perf)]
        for where, t in timed:
            if t < self.start_ns or (end is not None and t >= end):
                window = f"{self.start_ns}..{end - 1}" if end is not None else f">= {self.start_ns}"
                raise ValueError(f"{where} ({t}) is outside the VM's lifetime (allowed: {window})")
        for m in self.msrs:
            if m.vcpu != "all" and m.vcpu >= self.vcpus:
                raise ValueError(f"msrs: vcpu {m.vcpu} does not exist (allowed: 0..{self.vcpus - 1}, all)")
            if m.value >> 64:
                raise ValueError(f"msrs: value {m.value:#x} does not fit 64 bits")
        if self.pin is not None and len(self.pin) != self.vcpus:
            raise ValueError(f"pin needs one host CPU per vCPU ({self.vcpus}), got {len(self.pin)}")
        for w in self.work:
            if w.vcpu != "all" and w.vcpu >= self.vcpus:
                raise ValueError(f"work: vcpu {w.vcpu} does not exist (allowed: 0..{self.vcpus - 1}, all)")
        names = [s.name for s in self.perf]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"perf: duplicate session names {dup} (each guest perf session needs its own name)")
        for s in self.perf:
            idx = [s.vcpu] if isinstance(s.vcpu, int) else s.vcpu if isinstance(s.vcpu, list) else []
            for i in idx:
                if i >= self.vcpus:
                    raise ValueError(f"perf {s.name!r}: vcpu {i} does not exist (allowed: 0..{self.vcpus - 1}, all)")
        return self


class HostSpec(_Strict):
    tasks: list[HostTask] = Field(default_factory=list)
    perf: list[HostPerfSession] = Field(default_factory=list)


class Scenario(_Strict):
    """A vpmu scenario (YAML or TOML). See docs/scenarios.md."""

    name: str = ""
    description: str = ""
    cpu: str = Field(description="CPU model, e.g. intel/icelake (see `vpmu models`)")
    model_options: dict[str, Any] = Field(default_factory=dict)
    facilities: list[str] = Field(default_factory=list, description="e.g. [lbr] (see `vpmu models`)")
    facility_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    mode: str = Field(description="virtualization mode, e.g. emulated (see `vpmu modes`)")
    mode_options: dict[str, Any] = Field(default_factory=dict)
    cpus: int = Field(2, ge=1, le=256, description="host CPUs")
    seed: NonNegInt = 0
    duration_ns: int = Field(20_000_000, ge=1, le=10_000_000_000)
    mux_interval_ns: int = Field(4_000_000, ge=100_000, description="perf multiplexing rotation interval")
    costs: CostOverrides = Field(default_factory=CostOverrides)
    host: HostSpec = Field(default_factory=HostSpec)
    vms: list[VmSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        names = [t.name for t in self.host.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"host.tasks: duplicate task names {dup}")
        vm_names = [v.name for v in self.vms]
        dup = sorted({n for n in vm_names if vm_names.count(n) > 1})
        if dup:
            raise ValueError(f"vms: duplicate VM names {dup}")
        perf_names = [s.name for s in self.host.perf]
        dup = sorted({n for n in perf_names if perf_names.count(n) > 1})
        if dup:
            raise ValueError(f"host.perf: duplicate session names {dup} (each host perf session needs its own name)")
        total = sum(v.vcpus for v in self.vms)
        if total > MAX_VCPUS_TOTAL:
            raise ValueError(f"vms: {total} vCPUs in all (allowed: at most {MAX_VCPUS_TOTAL}, memory is the limit)")
        if "freq_hz" in self.model_options:
            f = self.model_options["freq_hz"]
            if isinstance(f, bool) or not isinstance(f, int) or not FREQ_HZ_MIN <= f <= FREQ_HZ_MAX:
                raise ValueError(
                    f"model_options.freq_hz: {f!r} is not a clock in Hz (allowed: integers {FREQ_HZ_MIN:_}..{FREQ_HZ_MAX:_})"
                )
        lbr_facility = any(f in LBR_FACILITIES for f in self.facilities)
        for i, v in enumerate(self.vms):
            if v.pmu.lbr and not lbr_facility:
                raise ValueError(
                    f"vms[{i}].pmu.lbr: true needs an LBR facility, the scenario has "
                    f"{', '.join(self.facilities) or 'none'} (add one of: {', '.join(LBR_FACILITIES)})"
                )
        cpu_range = f"0..{self.cpus - 1}"
        for t in self.host.tasks:
            if t.cpu is not None and t.cpu >= self.cpus:
                raise ValueError(f"host.tasks {t.name!r}: cpu {t.cpu} is not a host CPU (allowed: {cpu_range})")
        for v in self.vms:
            for c in v.pin or ():
                if c >= self.cpus:
                    raise ValueError(f"vms {v.name!r}: pin {c} is not a host CPU (allowed: {cpu_range})")
        targets = set(names) | {f"{v.name}/vcpu{i}" for v in self.vms for i in range(v.vcpus)}
        for s in self.host.perf:
            cpus = [s.cpu] if isinstance(s.cpu, int) else s.cpu if isinstance(s.cpu, list) else []
            for c in cpus:
                if c >= self.cpus:
                    raise ValueError(f"host.perf {s.name!r}: cpu {c} is not a host CPU (allowed: {cpu_range})")
            if s.task is not None and s.task not in targets:
                raise ValueError(
                    f"host.perf {s.name!r}: unknown task {s.task!r} (allowed: {', '.join(sorted(targets)) or 'none'})"
                )
        return self

    def warnings(self) -> list[str]:
        """What the scenario asks for that will not happen (stderr warnings, not errors: a
        `--set duration_ns=...` that cuts a shipped scenario short is legitimate)."""
        out: list[str] = []
        end = self.duration_ns

        def late(path: str, what: str, t: int) -> None:
            if t > end:
                out.append(
                    f"{path}: {what} starts at {t:_} ns, after the run ends (duration_ns {end:_}): it never runs"
                )

        for i, s in enumerate(self.host.perf):
            late(f"host.perf[{i}].start_ns", f"host perf session {s.name!r}", s.start_ns)
        for i, t in enumerate(self.host.tasks):
            late(f"host.tasks[{i}].at_ns", f"host task {t.name!r}", t.at_ns)
        for vi, v in enumerate(self.vms):
            for i, gs in enumerate(v.perf):
                late(f"vms[{vi}].perf[{i}].start_ns", f"guest perf session {gs.name!r}", gs.start_ns)
            for i, w in enumerate(v.work):
                late(f"vms[{vi}].work[{i}].at_ns", "guest work", w.at_ns)
            for i, m in enumerate(v.msrs):
                late(f"vms[{vi}].msrs[{i}].at_ns", f"guest wrmsr {m.msr:#x}", m.at_ns)
        return out

    def cost_overrides(self) -> dict[str, Any]:
        return self.costs.model_dump(exclude_none=True)
