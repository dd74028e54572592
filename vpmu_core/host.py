"""The composition root: `compose()` builds a `Host`, the machine with the hypervisor on it.

The top of the layering (DESIGN §3): it imports every layer below it and none imports it
at run time. `Machine` (vpmu_core/engine) is the hardware and the host kernel; `Host` adds
what KVM adds: the VMs, the composed mode and facilities and their hooks (resolved once),
wired into the machine through the engine's notifiers (a PMI claimer, the perf_event_open
veto) as KVM registers its perf callbacks.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from vpmu_core import hookspecs
from vpmu_core.costs import CostModel, compose_cost_model, cost_model
from vpmu_core.engine.machine import Machine
from vpmu_core.errors import ConfigError
from vpmu_core.hv.config import FACILITY_SWITCHES
from vpmu_core.hv.fast_forward import enabled as ff_enabled
from vpmu_core.markers import PROJECT
from vpmu_core.perf.attr import PerfEventAttr
from vpmu_core.plugins.discovery import Catalog, build_catalog, catalog, new_plugin_manager
from vpmu_core.plugins.records import CpuModelSpec, FacilitySpec, ModeSpec
from vpmu_core.plugins.resolve import ResolvedHooks

if TYPE_CHECKING:
    import pluggy

    from vpmu_core.engine.exits import ExitProfile
    from vpmu_core.hv.config import GuestPmuConfig
    from vpmu_core.hv.vm import VM


class Host(Machine):
    """Built by `vpmu.compose()`; see DESIGN §5 for the API."""

    def __init__(
        self,
        *,
        model: Any,
        facilities: dict[str, Any],
        hooks: ResolvedHooks,
        mode: Any,
        mode_name: str,
        mode_options: dict[str, Any],
        costs: CostModel,
        cpus: int,
        seed: int,
        mux_interval_ns: int = 4_000_000,
        sched_slice_ns: int = 3_000_000,
        composition: dict[str, Any] | None = None,
        facility_switches: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            model=model,
            facilities=facilities,
            costs=costs,
            cpus=cpus,
            seed=seed,
            mux_interval_ns=mux_interval_ns,
            sched_slice_ns=sched_slice_ns,
        )
        self.hooks = hooks
        self.mode = mode
        self.mode_name = mode_name
        self.mode_options = mode_options
        self.composition = composition or {}
        #: installed facility name -> the GuestPmuConfig field that switches it for a guest
        #: (`FacilitySpec.guest_switch`), in catalog order
        self.facility_switches: dict[str, str] = dict(facility_switches or {})
        #: the composition's plugin manager (set by compose(); registration is closed)
        self.plugin_manager: pluggy.PluginManager | None = None
        #: every VM created on this host, in creation order; destroyed ones stay (flagged
        #: `vm.destroyed`) so the report keeps their figures
        self.vms: list[VM] = []
        #: fast-forward background exits (exact; `VPMU_FF=0` for one by one): read when a
        #: vCPU is created
        self.fast_forward = ff_enabled()
        assert self.perf is not None
        self.perf.open_filter = self._open_filter
        self.pmi_claimers.append(self._claim_pmi)
        hooks.host_created(host=self)

    def _open_filter(self, attr: PerfEventAttr, pid: int, cpu: int) -> int | None:
        """A mode may refuse a host perf_event_open (`vpmu_host_perf_event_open`)."""
        return self.hooks.host_perf_event_open(attr=attr, pid=pid, cpu=cpu)

    def _claim_pmi(self, cpu: Any, pmc: Any, overshoot: int) -> bool:
        """The mode takes a PMI of a loaded guest context (`vpmu_host_pmi`)."""
        return bool(self.hooks.host_pmi(cpu=cpu, pmc=pmc, overshoot=overshoot))

    def set_tracer(self, tracer: Any) -> None:
        """Record a timeline: VM-entries/exits, PMIs, counter ownership, event states."""
        super().set_tracer(tracer)
        for vm in self.vms:
            vm.set_tracer(tracer)

    # ---- VMs --------------------------------------------------------------------------------
    def create_vm(
        self,
        vcpus: int = 1,
        pmu: GuestPmuConfig | None = None,
        pin: list[int] | None = None,
        exits: ExitProfile | None = None,
        name: str | None = None,
    ) -> VM:
        from vpmu_core.engine.exits import ExitProfile
        from vpmu_core.hv.config import GuestPmuConfig
        from vpmu_core.hv.vm import VM

        taken = {vm.name for vm in self.vms}
        if name is None:
            n = len(self.vms)
            while f"vm{n}" in taken:
                n += 1
            name = f"vm{n}"
        if name in taken:
            # vCPU names key the ledgers: a destroyed VM keeps its figures under its name
            raise ConfigError("name", f"a VM named {name!r} already exists on this host (destroyed VMs keep theirs)")
        vm = VM(
            self,
            name,
            vcpus=vcpus,
            pmu=pmu or GuestPmuConfig(),
            pin=pin,
            exits=exits or ExitProfile(),
        )
        return vm

    # ---- reports --------------------------------------------------------------------------
    def report(self) -> Any:
        from vpmu_core.metrics.report import build_report

        vms = (vm.snapshot() for vm in self.vms)  # taken after the host's events are read
        return build_report(self, vms, lambda: self.hooks.mode_report(host=self), self.composition)


def _warn_legacy_methods(mode: str, obj: Any) -> None:
    """A mode written for 0.1 has plain methods the core no longer looks up by name: say
    which hook replaces each (silently ignoring them would change its numbers)."""
    for old, new in hookspecs.LEGACY_MODE_METHODS.items():
        fn = getattr(obj, old, None)
        if callable(fn) and not hasattr(fn, f"{PROJECT}_impl"):
            warnings.warn(
                f"mode {mode!r}: the plain method {old}() is no longer called; implement the hook {new} "
                "(@hookimpl, docs/plugin-hooks.md)",
                UserWarning,
                stacklevel=3,
            )


def _choices(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "(none installed)"


def _compose_costs(
    cat: Catalog,
    model: Any,
    mspec: CpuModelSpec,
    fspecs: list[FacilitySpec],
    mode_spec: ModeSpec,
    costs: CostModel | Mapping[str, Any] | None,
) -> CostModel:
    """The composition's cost model: the core's fields plus those the composed model,
    facilities and mode declare, under the preset (`costs["preset"]`, else the model's
    `cost_preset`), then the overrides. An override of a field only a plugin that is not
    composed declares changes nothing (a scenario's mediated costs under emulated); a field
    no installed plugin declares, or a preset none names, is a `ConfigError`."""
    composed = [mspec, *fspecs, mode_spec]
    try:
        fields = compose_cost_model((f"{type(s).__name__} {s.name!r}", s.costs) for s in composed)
    except ValueError as e:
        raise ConfigError("costs", str(e)) from None
    if isinstance(costs, CostModel):
        # a whole cost model: every field of it as given, the composed ones' defaults for the rest
        given = costs.model_dump()
        return fields(**{k: v for k, v in given.items() if k in fields.model_fields})
    overrides = dict(costs or {})
    asked = overrides.pop("preset", None)
    preset = asked or getattr(model, "cost_preset", None)
    known = cat.cost_presets()
    if preset is not None and preset not in known:
        where = "costs.preset" if asked else f"cost_preset of {mspec.name}"
        raise ConfigError(where, f"unknown cost preset {preset!r}", _choices(known))
    allowed = cat.cost_fields()
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ConfigError("costs", f"unknown cost field(s) {unknown}", _choices([*allowed, "preset"]))
    values: dict[str, Any] = {}
    if preset is not None:
        for s in composed:
            values.update(s.cost_presets.get(preset, {}))
    values.update({k: v for k, v in overrides.items() if k in fields.model_fields})
    try:
        return cost_model(None, values, model=fields)
    except Exception as e:
        raise ConfigError("costs", str(e), _choices(fields.model_fields)) from None


def compose(
    cpu: str,
    mode: str,
    facilities: Iterable[str] = (),
    cpus: int = 2,
    mode_options: Mapping[str, Any] | None = None,
    costs: CostModel | Mapping[str, Any] | None = None,
    seed: int = 0,
    *,
    model_options: Mapping[str, Any] | None = None,
    facility_options: Mapping[str, Mapping[str, Any]] | None = None,
    mux_interval_ns: int = 4_000_000,
    plugins: list[tuple[str, Any]] | None = None,
    catalog_: Catalog | None = None,
) -> Host:
    """Compose a host: `cpu` model name, `mode` name, facility names.

    `plugins=[(name, module_or_object), ...]` uses exactly those plugins instead of the
    installed entry points (tests and third-party kits register their plugins directly).
    Unknown names raise `ConfigError` listing the valid ones.
    """
    cat = catalog_ or (build_catalog(plugins, []) if plugins is not None else catalog())
    for key, owners in cat.conflicts.items():
        kind, name = key.split(" ", 1)
        if name in (cpu, mode, *facilities):
            raise ConfigError(kind, f"{name!r} is registered by several plugins: {', '.join(owners)}")
    if cpu not in cat.cpu_models:
        raise ConfigError("cpu", f"unknown CPU model {cpu!r}", _choices(cat.cpu_models))
    if mode not in cat.modes:
        raise ConfigError("mode", f"unknown mode {mode!r}", _choices(cat.modes))
    facilities = tuple(dict.fromkeys(facilities))
    for f in facilities:
        if f not in cat.facilities:
            raise ConfigError("facility", f"unknown facility {f!r}", _choices(cat.facilities))
    mspec = cat.cpu_models[cpu]
    model = mspec.factory(dict(model_options or {}))
    fac_objs: dict[str, Any] = {}
    for f in facilities:
        fspec = cat.facilities[f]
        if not fspec.applies_to(model):
            ok = [n for n, s in cat.facilities.items() if s.applies_to(model)]
            raise ConfigError("facility", f"{f!r} does not apply to {cpu}", _choices(ok))
        fac_objs[f] = fspec.factory(model, dict((facility_options or {}).get(f, {})))
    cost = _compose_costs(cat, model, mspec, [cat.facilities[f] for f in facilities], cat.modes[mode], costs)
    switches = {n: s.guest_switch for n, s in cat.facilities.items() if s.guest_switch is not None}
    for n, sw in switches.items():
        if sw not in FACILITY_SWITCHES:
            raise ConfigError(
                "facility",
                f"{n!r} declares guest_switch {sw!r}, not a GuestPmuConfig switch",
                _choices(FACILITY_SWITCHES),
            )
    mode_spec = cat.modes[mode]
    opts = dict(mode_options or {})
    unknown = sorted(set(opts) - set(mode_spec.options))
    if unknown:
        raise ConfigError("mode_options", f"unknown option(s) {unknown} for mode {mode!r}", _choices(mode_spec.options))
    mode_obj = mode_spec.factory(model, opts)
    _warn_legacy_methods(mode, mode_obj)
    pm = new_plugin_manager()
    pm.register(mode_obj, name=f"mode:{mode}")
    for name, fo in fac_objs.items():
        pm.register(fo, name=f"facility:{name}")
    pm.check_pending()
    hooks = ResolvedHooks(pm)
    host = Host(
        model=model,
        facilities=fac_objs,
        hooks=hooks,
        mode=mode_obj,
        mode_name=mode,
        mode_options=opts,
        costs=cost,
        cpus=cpus,
        seed=seed,
        mux_interval_ns=mux_interval_ns,
        facility_switches=switches,
        composition={
            "cpu": cpu,
            "mode": mode,
            "facilities": list(facilities),
            "cpus": cpus,
            "mode_options": opts,
            "seed": seed,
        },
    )
    host.plugin_manager = pm
    pm.register = _registration_closed  # type: ignore[method-assign]
    return host


def _registration_closed(plugin: object, name: str | None = None) -> str | None:
    """The hooks were resolved once at compose: a plugin registered afterwards would never
    be called. Compose again with it instead (`compose(..., plugins=[...])`)."""
    raise ConfigError("plugin_manager", "registration is closed once compose() has resolved the hooks")
