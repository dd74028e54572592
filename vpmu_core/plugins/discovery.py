"""Discovery: stevedore finds and loads the `vpmu.plugins` entry points; pluggy registers.

Pitfalls handled (facts/plugin-conventions.md): a broken plugin is recorded, never fatal
(P6); versions come from importlib.metadata since stevedore's entry points lack `.dist`
(P7); a fresh PluginManager per catalog/composition (P5); `check_pending()` catches hook
typos (P3); a plugin implementing no vpmu hook is an error (P2); duplicate names across
distributions are refused naming both (P4); order is by name, never install order (P17).
"""

from __future__ import annotations

import importlib.metadata as md
import os
from dataclasses import dataclass, field
from typing import Any

import pluggy
from stevedore import ExtensionManager

from vpmu_core import hookspecs
from vpmu_core.errors import ConfigError
from vpmu_core.logs import get_logger
from vpmu_core.markers import ENTRY_POINT_GROUP, PROJECT
from vpmu_core.plugins.records import CpuModelSpec, FacilitySpec, ModeSpec, PluginRecord, _Spec

log = get_logger("vpmu.plugins")


class PluginError(ConfigError):
    """A plugin is broken in a way that prevents composing with it."""


@dataclass
class Catalog:
    """What is installed: plugins and the models, facilities and modes they provide."""

    plugins: list[PluginRecord] = field(default_factory=list)
    cpu_models: dict[str, CpuModelSpec] = field(default_factory=dict)
    facilities: dict[str, FacilitySpec] = field(default_factory=dict)
    modes: dict[str, ModeSpec] = field(default_factory=dict)
    scenarios: dict[str, str] = field(default_factory=dict)
    #: name conflicts: "kind name" -> plugins that registered it
    conflicts: dict[str, list[str]] = field(default_factory=dict)
    pm: pluggy.PluginManager | None = None

    def plugin(self, name: str) -> PluginRecord | None:
        return next((p for p in self.plugins if p.name == name), None)

    def specs(self) -> list[CpuModelSpec | FacilitySpec | ModeSpec]:
        """Every registered model, facility and mode, in that order."""
        return [*self.cpu_models.values(), *self.facilities.values(), *self.modes.values()]

    def cost_fields(self) -> list[str]:
        """Every cost field a scenario may set: the core's and every installed spec's."""
        from vpmu_core.costs import CostModel  # not needed to discover (vpmu plugins)

        out = list(CostModel.model_fields)
        for spec in self.specs():
            out += [n for n in (spec.costs.model_fields if spec.costs is not None else ()) if n not in out]
        return out

    def cost_presets(self) -> list[str]:
        """Every preset name an installed spec declares."""
        return sorted({name for spec in self.specs() for name in spec.cost_presets})


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def entry_point_dists() -> dict[str, tuple[str, str]]:
    """Entry point name -> (distribution name, version) of every `vpmu.plugins` entry point:
    one scan of the installed metadata, which `load_entry_points` and `build_catalog` can
    share (`dists=`) instead of scanning twice."""
    out = {}
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        if dist is not None:
            out[ep.name] = (dist.metadata["Name"], dist.version)
    return out


def _selected_names() -> tuple[set[str] | None, set[str]]:
    load = os.environ.get("VPMU_LOAD_PLUGINS")
    only = None if load is None else {n.strip() for n in load.split(",") if n.strip()}
    disabled = {n.strip() for n in os.environ.get("VPMU_DISABLE_PLUGINS", "").split(",") if n.strip()}
    return only, disabled


def load_entry_points(
    *, dists: dict[str, tuple[str, str]] | None = None
) -> tuple[list[tuple[str, Any]], list[PluginRecord]]:
    """Load every `vpmu.plugins` entry point; failures become records (`dists`: a scan
    from `entry_point_dists`, default a fresh one)."""
    failures: list[PluginRecord] = []
    dists = entry_point_dists() if dists is None else dists
    only, disabled = _selected_names()

    def on_fail(manager: Any, ep: Any, err: BaseException) -> None:
        dist, ver = dists.get(ep.name, (None, None))
        failures.append(
            PluginRecord(
                name=ep.name, dist=dist, version=ver, status="failed", load_error=f"{type(err).__name__}: {err}"
            )
        )
        log.warning("plugin.load_failed", name=ep.name, target=ep.value, error=str(err))

    mgr = ExtensionManager(ENTRY_POINT_GROUP, invoke_on_load=False, on_load_failure_callback=on_fail)
    loaded = []
    for ext in sorted(mgr.extensions, key=lambda e: e.name):
        if (only is not None and ext.name not in only) or ext.name in disabled:
            continue
        loaded.append((ext.name, ext.plugin))
    return loaded, failures


def build_catalog(
    plugins: list[tuple[str, Any]] | None = None,
    failures: list[PluginRecord] | None = None,
    *,
    dists: dict[str, tuple[str, str]] | None = None,
) -> Catalog:
    """Register `plugins` ((name, module-or-object) pairs; default: the installed entry
    points) into a fresh PluginManager and collect what they register (`dists`: a scan
    from `entry_point_dists`, default a fresh one)."""
    dists = entry_point_dists() if dists is None else dists
    if plugins is None:
        plugins, failures = load_entry_points(dists=dists)
    cat = Catalog()
    pm = new_plugin_manager()
    cat.pm = pm
    records = list(failures or [])
    for name, obj in sorted(plugins, key=lambda p: p[0]):
        dist, ver = dists.get(name, (None, None))
        try:
            if pm.get_plugin(name) is not None or pm.is_registered(obj):
                raise PluginError("plugin", f"{name!r} is registered twice")
            pm.register(obj, name=name)
            pm.check_pending()
            callers = pm.get_hookcallers(obj) or []
            if not callers:
                raise PluginError(
                    "plugin", f"{name!r} is registered but implements no vpmu hook (marker project name?)"
                )
        except Exception as err:  # a broken plugin never breaks discovery
            if pm.is_registered(obj):
                pm.unregister(obj)
            records.append(PluginRecord(name=name, dist=dist, version=ver, status="failed", load_error=str(err)))
            log.warning("plugin.rejected", name=name, error=str(err))
            continue
        provides: dict[str, list[str]] = {"cpu_models": [], "facilities": [], "modes": [], "scenarios": []}
        #: what this plugin registers, applied to the catalog only once all its
        #: registration hooks succeeded (a plugin is registered whole or not at all)
        staged: list[tuple[str, str, Any]] = []

        def reg(kind: str, spec_type: type[_Spec] | None, plugin_name: str = name, staged: list[Any] = staged) -> Any:
            def register(spec: Any = None, path: str | None = None, **kw: Any) -> None:
                if kind == "scenarios":
                    sname = spec if isinstance(spec, str) else kw["name"]
                    staged.append((kind, sname, str(path)))
                    return
                assert spec_type is not None, "every kind but scenarios registers a spec"
                if spec is None:
                    spec = spec_type(**kw)
                if not isinstance(spec, spec_type):
                    raise PluginError(
                        kind, f"{plugin_name} registered a {type(spec).__name__}, expected {spec_type.__name__}"
                    )
                spec = spec.model_copy(update={"plugin": plugin_name})
                staged.append((kind, spec.name, spec))

            return register

        try:
            impl = getattr(obj, "vpmu_register_cpu_models", None)
            if impl:
                impl(register=reg("cpu_models", CpuModelSpec))
            impl = getattr(obj, "vpmu_register_facilities", None)
            if impl:
                impl(register=reg("facilities", FacilitySpec))
            impl = getattr(obj, "vpmu_register_modes", None)
            if impl:
                impl(register=reg("modes", ModeSpec))
            impl = getattr(obj, "vpmu_register_scenarios", None)
            if impl:
                impl(register=reg("scenarios", None))
        except Exception as err:
            pm.unregister(obj)
            records.append(
                PluginRecord(name=name, dist=dist, version=ver, status="failed", load_error=f"register: {err}")
            )
            log.warning("plugin.register_failed", name=name, error=str(err))
            continue
        tables: dict[str, dict[str, Any]] = {
            "cpu_models": cat.cpu_models,
            "facilities": cat.facilities,
            "modes": cat.modes,
            "scenarios": cat.scenarios,
        }
        for kind, item_name, item in staged:
            table = tables[kind]
            if kind != "scenarios" and item_name in table:
                key = f"{kind[:-1]} {item_name}"
                cat.conflicts.setdefault(key, [table[item_name].plugin]).append(name)
            else:
                table[item_name] = item
            provides[kind].append(item_name)
        hooks = tuple(sorted(h.name for h in callers))
        records.append(
            PluginRecord(
                name=name,
                dist=dist,
                version=ver,
                hooks=hooks,
                provides={k: tuple(v) for k, v in provides.items() if v},
            )
        )
    cat.plugins = sorted(records, key=lambda r: r.name)
    return cat


def catalog() -> Catalog:
    """The installed plugins (fresh discovery each call; importing vpmu_core discovers nothing)."""
    return build_catalog()
