"""`perf_event_attr`, event states and read values, as the perf ABI defines them
(include/uapi/linux/perf_event.h)."""

from __future__ import annotations

import errno
from enum import IntEnum
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vpmu_core.errors import PerfError

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
#: include/uapi/linux/perf_event.h `enum perf_hw_id`: the generic name of each PERF_COUNT_HW_*
#: number (0 cpu-cycles ... 9 ref-cycles; "branches" is PERF_COUNT_HW_BRANCH_INSTRUCTIONS)
PERF_HW_IDS = (
    "cycles",
    "instructions",
    "cache-references",
    "cache-misses",
    "branches",
    "branch-misses",
    "bus-cycles",
    "stalled-cycles-frontend",
    "stalled-cycles-backend",
    "ref-cycles",
)
#: PERF_COUNT_HW_MAX, the size of every x86 `*_perfmon_event_map` (x86_pmu.max_events)
PERF_COUNT_HW_MAX = len(PERF_HW_IDS)
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

    `type="hardware"` takes a generic event as `config`, by name or by its PERF_COUNT_HW_*
    number (`PERF_HW_IDS`; the perf core decodes the number, see `decode_hw_config`);
    `type="raw"` takes the raw event-select encoding (event | umask << 8 | ... as the vendor
    defines it).
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


def decode_hw_config(attr: PerfEventAttr) -> PerfEventAttr:
    """The vendor-neutral half of x86_setup_perfctr() (arch/x86/events/core.c), done once in
    the core for every driver: a `type="hardware"` config that is a PERF_COUNT_HW_* number
    becomes its generic name, so a driver only maps names to encodings (its `event_map`).

    `attr->config >= x86_pmu.max_events` (PERF_COUNT_HW_MAX) is -EINVAL; so is a name that
    stands for no PERF_COUNT_HW_* number. The driver then answers -ENOENT for a name its
    map has no encoding for (`x86_pmu.event_map()` returning 0). Other types pass through."""
    if attr.type != "hardware":
        return attr
    cfg = attr.config
    if isinstance(cfg, int):
        if not 0 <= cfg < PERF_COUNT_HW_MAX:
            raise PerfError(errno.EINVAL, f"hardware config {cfg} out of range 0..{PERF_COUNT_HW_MAX - 1}")
        return attr.model_copy(update={"config": PERF_HW_IDS[cfg]})
    if cfg not in PERF_HW_IDS:
        raise PerfError(errno.EINVAL, f"unknown generic event {cfg!r} (allowed: {', '.join(PERF_HW_IDS)})")
    return attr
