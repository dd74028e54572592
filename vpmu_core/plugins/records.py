"""Typed records plugins register (conda's "small typed records" shape)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_NAME = re.compile(r"^[a-z0-9][a-z0-9_./-]*$")


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, extra="forbid")

    name: str
    description: str = ""
    #: option name -> help text (shown by `vpmu models` / `vpmu modes`)
    options: dict[str, str] = Field(default_factory=dict)
    #: filled by the loader: the plugin (entry point name) that registered it
    plugin: str = ""
    #: the cost fields of this model's, facility's or mode's own design: a pydantic model
    #: whose fields (host cycles, defaults = the baseline numbers) compose() merges into the
    #: core's `CostModel` when this is composed (vpmu_core/costs.py)
    costs: type[BaseModel] | None = None
    #: preset name -> {field: value}: the numbers of a preset (`costs: {preset: amd}` or the
    #: CPU model's `cost_preset`) for fields this declares (a mode's own) or the core's (a
    #: vendor's); a preset no installed spec names is an error
    cost_presets: dict[str, dict[str, int | float]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _lower(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"name {v!r} must be lower case [a-z0-9_./-]")
        return v


class CpuModelSpec(_Spec):
    """A CPU model: ``factory(options: dict) -> CpuModel``."""

    vendor: str
    factory: Callable[[dict[str, Any]], Any]


class FacilitySpec(_Spec):
    """A facility: ``factory(model, options) -> Facility``; ``applies_to(model) -> bool``."""

    factory: Callable[[Any, dict[str, Any]], Any]
    applies_to: Callable[[Any], bool] = lambda model: True
    #: the `GuestPmuConfig` field that gives a guest this facility (e.g. "lbr": both LBR
    #: facilities; `lbr=False` hides it, `lbr=True` needs one of the facilities that name
    #: it), or None (`vpmu_core.hv.config.FACILITY_SWITCHES` lists the fields)
    guest_switch: str | None = None


class ModeSpec(_Spec):
    """A mode: ``factory(model, options) -> object implementing hypervisor hooks`` (the host
    calls its optional ``attach(host)`` once built)."""

    factory: Callable[[Any, dict[str, Any]], Any]


class PluginRecord(BaseModel):
    """One discovered plugin, loaded or not."""

    model_config = ConfigDict(frozen=True)

    name: str
    dist: str | None = None
    version: str | None = None
    status: str = "loaded"  # loaded | failed
    hooks: tuple[str, ...] = ()
    load_error: str | None = None
    provides: dict[str, tuple[str, ...]] = Field(default_factory=dict)
