"""compose(): build a Host from a CPU model, facilities and a mode, resolving hooks once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vpmu_core.costs import CostModel, cost_model
from vpmu_core.errors import ConfigError
from vpmu_core.plugins.discovery import Catalog, build_catalog, catalog, new_plugin_manager
from vpmu_core.plugins.resolve import ResolvedHooks


def _choices(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "(none installed)"


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
) -> Any:
    """Compose a host: `cpu` model name, `mode` name, facility names.

    `plugins=[(name, module_or_object), ...]` uses exactly those plugins instead of the
    installed entry points (tests and third-party kits register their plugins directly).
    Unknown names raise `ConfigError` listing the valid ones.
    """
    from vpmu_core.engine.host import Host

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
    if isinstance(costs, CostModel):
        cost = costs
    else:
        try:
            cost = cost_model(getattr(model, "cost_preset", "intel"), dict(costs or {}))
        except Exception as e:
            raise ConfigError("costs", str(e), ", ".join(CostModel.model_fields)) from None
    mode_spec = cat.modes[mode]
    opts = dict(mode_options or {})
    unknown = sorted(set(opts) - set(mode_spec.options))
    if unknown:
        raise ConfigError("mode_options", f"unknown option(s) {unknown} for mode {mode!r}", _choices(mode_spec.options))
    mode_obj = mode_spec.factory(model, opts)
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
        composition={
            "cpu": cpu,
            "mode": mode,
            "facilities": list(facilities),
            "cpus": cpus,
            "mode_options": opts,
            "seed": seed,
        },
    )
    host.plugin_manager = pm  # type: ignore[attr-defined]
    return host
