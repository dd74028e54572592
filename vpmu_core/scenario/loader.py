"""Loading scenarios: YAML or TOML files, shipped and plugin-registered names, `--set`
overrides, and validation errors that name the file, the field path and the allowed values."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vpmu_core.errors import ConfigError
from vpmu_core.scenario.schema import Scenario

SUFFIXES = (".yaml", ".yml", ".toml")


class ScenarioError(ConfigError):
    """A scenario that cannot be loaded or validated. `str()` is the one message to show."""

    def __init__(self, source: str, message: str) -> None:
        ValueError.__init__(self, f"{source}: {message}")
        self.field = ""
        self.allowed = None
        self.source = source


def shipped_scenarios() -> dict[str, str]:
    """Scenarios shipped in `vpmu_core/scenarios/` (name -> path)."""
    out: dict[str, str] = {}
    root = resources.files("vpmu_core") / "scenarios"
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        p = Path(str(entry))
        if p.suffix in SUFFIXES:
            out[p.stem] = str(p)
    return out


def available_scenarios(catalog: Any | None = None) -> dict[str, str]:
    """Shipped scenarios plus those plugins register (`vpmu_register_scenarios`)."""
    out = shipped_scenarios()
    if catalog is not None:
        for name, path in sorted(catalog.scenarios.items()):
            out.setdefault(name, path)
    return out


def resolve(ref: str, catalog: Any | None = None) -> Path:
    """A scenario reference: an existing file path, else a shipped or registered name."""
    p = Path(ref)
    if not ref.strip():
        raise ScenarioError(
            "scenario", f"empty name (allowed: a file path or {', '.join(sorted(available_scenarios(catalog)))})"
        )
    if p.suffix in SUFFIXES or "/" in ref or p.exists():
        if p.is_dir():
            raise ScenarioError(ref, f"is a directory, not a scenario file (expected {', '.join(SUFFIXES)})")
        if p.exists() and not p.is_file():
            raise ScenarioError(ref, "is not a regular file (a device or a pipe), not a scenario file")
        if not p.exists():
            raise ScenarioError(ref, "no such scenario file")
        return p
    names = available_scenarios(catalog)
    if ref in names:
        return Path(names[ref])
    raise ScenarioError(ref, f"not a file and not a known scenario (allowed: {', '.join(sorted(names))})")


def read_data(path: Path) -> dict[str, Any]:
    """Parse a YAML or TOML file into plain data (no validation yet)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ScenarioError(str(path), f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(
            str(path), f"not a text file (byte {raw[e.start]:#04x} at offset {e.start} is not UTF-8): not a scenario"
        ) from None
    if "\x00" in text:
        raise ScenarioError(str(path), f"not a text file (NUL byte at offset {text.index(chr(0))}): not a scenario")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, ValueError, RecursionError) as e:
        raise ScenarioError(str(path), f"not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(str(path), f"the top level must be a mapping, got {type(data).__name__}")
    return data


# ---- overrides ------------------------------------------------------------------------------
def parse_assignment(text: str) -> tuple[list[str], Any]:
    """`a.b.0.c=value` -> (['a', 'b', '0', 'c'], value parsed as a YAML scalar/flow value)."""
    if "=" not in text:
        raise ConfigError("--set", f"{text!r} is not key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(
            "--set", f"bad key {key!r} (dotted path, e.g. vms.0.vcpus or host.perf.nmi_watchdog.start_ns)"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_set(data: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set a dotted path in scenario data. List items are addressed by index or by `name`."""
    cur: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(cur, list):
            idx = _list_index(cur, part, where)
            if last:
                cur[idx] = value
                return
            cur = cur[idx]
        elif isinstance(cur, dict):
            if last:
                cur[part] = value
                return
            if part not in cur or cur[part] is None:
                cur[part] = {}
            cur = cur[part]
        else:
            raise ConfigError("--set", f"{where}: cannot descend into a {type(cur).__name__}")


def _list_index(items: list[Any], part: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if not -len(items) <= idx < len(items):
            raise ConfigError("--set", f"{where}: index {idx} out of range (allowed: 0..{len(items) - 1})")
        return idx
    names = [it.get("name") for it in items if isinstance(it, dict)]
    for k, it in enumerate(items):
        if isinstance(it, dict) and it.get("name") == part:
            return k
    raise ConfigError("--set", f"{where}: no item named {part!r} (allowed: {', '.join(map(str, names))})")


# ---- validation --------------------------------------------------------------------------
def _loc_text(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at `loc` (walking Scenario's fields)."""
    import types
    import typing

    model: Any = Scenario
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = next((f for n, f in model.model_fields.items() if n == part or f.alias == part), None)
        if field is None:
            return None
        model = _inner_model(field.annotation, typing, types)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(ann: Any, typing: Any, types: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        m = _inner_model(arg, typing, types)
        if m is not None:
            return m
    return None


def _field_names(model: type[BaseModel]) -> list[str]:
    return sorted(f.alias or n for n, f in model.model_fields.items())


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    seen = set()
    for e in err.errors():
        loc = tuple(e["loc"])
        # unions report each branch; keep one message per location, skip branch tags
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("int", "str", "list", "literal"))))
        path = _loc_text(loc)
        if path in seen:
            continue
        seen.add(path)
        if e["type"] == "extra_forbidden":
            model = _model_at(loc)
            allowed = f" (allowed: {', '.join(_field_names(model))})" if model else ""
            lines.append(f"{path}: unknown field{allowed}")
        elif e["type"] == "missing":
            lines.append(f"{path}: required field missing")
        else:
            msg = e["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            where = "" if not loc else f"{path}: "
            lines.append(f"{where}{msg} (got {e.get('input')!r})" if e["type"] != "value_error" else f"{where}{msg}")
    more = len(lines) - 5
    text = "; ".join(lines[:5]) + (f"; and {more} more" if more > 0 else "")
    return text


def validate(data: Mapping[str, Any], source: str = "<scenario>", catalog: Any | None = None) -> Scenario:
    try:
        scn = Scenario.model_validate(dict(data))
    except ValidationError as e:
        raise ScenarioError(source, format_validation_error(e, source)) from None
    _check_plugin_costs(scn, source, catalog)
    return scn


def _check_plugin_costs(scn: Scenario, source: str, catalog: Any | None) -> None:
    """The `costs:` keys beyond the core's are the cost fields plugins declare: each must be
    one an installed plugin declares (`catalog`, default the installed one), and a
    non-negative number like the core's."""
    extra = scn.costs.model_extra or {}
    if not extra:
        return
    if catalog is None:
        from vpmu_core.plugins.discovery import catalog as installed

        catalog = installed()
    known = catalog.cost_fields()
    for key, value in extra.items():
        if key not in known:
            raise ScenarioError(
                source, f"costs.{key}: unknown field (allowed: {', '.join(sorted([*known, 'preset']))})"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(source, f"costs.{key}: Input should be a valid number (got {value!r})")
        if value < 0:
            raise ScenarioError(source, f"costs.{key}: Input should be greater than or equal to 0 (got {value!r})")


def load(
    ref: str | Path | None = None,
    *,
    sets: Iterable[str] = (),
    cpu: str | None = None,
    mode: str | None = None,
    facilities: Iterable[str] = (),
    catalog: Any | None = None,
) -> tuple[Scenario, str]:
    """Load, override and validate a scenario. Returns (scenario, source path).

    `ref`: a file path or a scenario name (None: the built-in `default`). `cpu`/`mode`
    replace the scenario's; `facilities` are added; `sets` are `dotted.key=value`, typed by
    the schema. A `mode` given as `name:opt=v,opt=v` also sets mode options."""
    path = resolve(str(ref) if ref is not None else "default", catalog)
    data = copy.deepcopy(read_data(path))
    source = str(path)
    if cpu is not None:
        if not cpu.strip():
            raise ScenarioError("--cpu", f"empty CPU model (allowed: {_names(catalog, 'cpu_models')})")
        data["cpu"] = cpu
    if mode is not None:
        name, opts = parse_mode_spec(mode)
        if not name:
            raise ScenarioError("--mode", f"empty mode {mode!r} (allowed: {_names(catalog, 'modes')})")
        keep = dict(data.get("mode_options") or {}) if data.get("mode") == name else {}
        data["mode"] = name
        data["mode_options"] = {**keep, **opts}
    for f in facilities:
        fl = list(data.get("facilities") or [])
        if f not in fl:
            fl.append(f)
        data["facilities"] = fl
    for s in sets:
        try:
            parts, value = parse_assignment(s)
            apply_set(data, parts, value)
        except ConfigError as e:
            raise ScenarioError(source, str(e)) from None
    return validate(data, source, catalog), source


def _names(catalog: Any | None, kind: str) -> str:
    names = sorted(getattr(catalog, kind, None) or {})
    return ", ".join(names) or "none installed"


def parse_mode_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`mediated:switch_at=exit,foo=1` -> ('mediated', {'switch_at': 'exit', 'foo': 1})."""
    name, _, rest = spec.partition(":")
    opts: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        if "=" not in item:
            raise ConfigError("mode", f"bad mode option {item!r} in {spec!r} (expected name:key=value,...)")
        k, v = item.split("=", 1)
        try:
            opts[k.strip()] = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError:
            opts[k.strip()] = v
    return name.strip(), opts


def resolved(scn: Scenario, costs: Any | None = None) -> dict[str, Any]:
    """The scenario with every default filled in, as plain data (`vpmu show`): the exit
    profile (rate, shares, reason weights), the full cost model with the overrides
    applied (`costs`: the composed host's, which includes the CPU vendor's preset), and
    each perf session's fields."""
    from vpmu_core.costs import CostModel

    data = scn.model_dump(mode="json", by_alias=True)
    if costs is None:  # no host composed: the core's fields, with the scenario's overrides of them
        costs = CostModel(**{k: v for k, v in scn.cost_overrides().items() if k in CostModel.model_fields})
    data["costs"] = costs.model_dump(mode="json")
    for v, spec in zip(data["vms"], scn.vms, strict=True):
        v["exits"] = spec.exits.build().model_dump(mode="json")
    return data
