"""What a plugin declares its own cost fields with (`vpmu_core.api.CostFields`, `CostField`).

A leaf module apart from `vpmu_core.costs`: a mode's `costs=` class is imported when the
mode registers (`vpmu plugins` lists it), and that should not build the core's `CostModel`
(about a third of what discovering the installed plugins costs otherwise)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CostFields(BaseModel):
    """Base of the cost fields a plugin declares (`ModeSpec(costs=...)`): one `Field(default,
    description=...)` per operation, in host cycles; the default is the baseline number."""

    model_config = ConfigDict(extra="forbid")


#: `vpmu_core.api.CostField`: a plugin's cost field (pydantic's Field)
CostField = Field
