"""`perf_event_attr`, event states and read values, as the perf ABI defines them
(include/uapi/linux/perf_event.h)."""

from __future__ import annotations

from enum import IntEnum
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

GENERIC_HW_EVENTS = (
    "cycles",
    "instructions",
    "cache-references",
    "cache-misses",
    "branches",
    "branch-misses",
    "bus-cycles",
    "ref-cycles",
)
BRANCH_SAMPLE_TYPES = ("any", "user", "kernel", "call_stack", "any_call", "any_return", "cond", "ind_call")


class EventState(IntEnum):
    """kernel/events/core.c `enum perf_event_state` (the subset that matters here)."""

    ERROR = -2
    OFF = -1
    INACTIVE = 0
    ACTIVE = 1


class PerfCount(NamedTuple):
    """read(2) with PERF_FORMAT_TOTAL_TIME_ENABLED | PERF_FORMAT_TOTAL_TIME_RUNNING (ns)."""

    value: int
    time_enabled: int
    time_running: int

    @property
    def scaled(self) -> int:
        """value * enabled / running: what `perf stat` prints for a multiplexed event."""
        if self.time_running == 0:
            return 0
        return self.value * self.time_enabled // self.time_running


class PerfEventAttr(BaseModel):
    """The attributes a perf user passes to perf_event_open.

    `type="hardware"` takes a generic event name as `config`; `type="raw"` takes the raw
    event-select encoding (event | umask << 8 | ... as the vendor defines it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["hardware", "raw"] = "hardware"
    config: str | int = "instructions"
    pinned: bool = False
    disabled: bool = False
    exclude_user: bool = False
    exclude_kernel: bool = False
    exclude_hv: bool = False
    exclude_idle: bool = False
    exclude_host: bool = False
    exclude_guest: bool = False
    sample_period: int = Field(default=0, ge=0)
    precise_ip: int = Field(default=0, ge=0, le=3)
    branch_sample_type: tuple[str, ...] = ()
    #: free text shown in reports (e.g. "kvm pmc0", "nmi_watchdog")
    name: str = ""

    @field_validator("branch_sample_type")
    @classmethod
    def _bst(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for t in v:
            if t not in BRANCH_SAMPLE_TYPES:
                raise ValueError(f"unknown branch_sample_type {t!r} (allowed: {', '.join(BRANCH_SAMPLE_TYPES)})")
        return tuple(v)

    @property
    def wants_branch_stack(self) -> bool:
        return bool(self.branch_sample_type)

    def label(self) -> str:
        if self.name:
            return self.name
        if self.type == "raw":
            return f"raw:{self.config:#x}" if isinstance(self.config, int) else f"raw:{self.config}"
        return str(self.config)
