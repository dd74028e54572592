"""A perf event: state, exact count and enabled/running times (kernel/events/core.c)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vpmu_core.errors import PerfError
from vpmu_core.perf.attr import EventState, PerfCount, PerfEventAttr
from vpmu_core.perf.driver import HwEvent

if TYPE_CHECKING:
    from vpmu_core.perf.core import PerfSubsystem

#: overflow handler: (event, overshoot events after the wrap) -> None
OverflowHandler = Callable[["PerfEvent", int], None]


class PerfEvent:
    """One perf event. `read()` is exact: saved count plus the live counter delta."""

    def __init__(
        self,
        subsystem: PerfSubsystem,
        attr: PerfEventAttr,
        hw: HwEvent,
        pid: int,
        cpu: int,
        task: Any | None,
        group_leader: PerfEvent | None,
        overflow_handler: OverflowHandler | None,
        owner: str,
        eid: int,
    ) -> None:
        self.subsystem = subsystem
        self.attr = attr
        self.hw = hw
        self.pid = pid
        self.cpu = cpu
        self.task = task
        self.leader = group_leader or self
        self.siblings: list[PerfEvent] = []
        self.overflow_handler = overflow_handler
        self.owner = owner
        self.id = eid
        self.state = EventState.OFF
        self.count = 0
        self.enabled_ns = 0
        self.running_ns = 0
        self._tstamp = 0
        self._t_enabled = False
        self._t_running = False
        #: counter index while ACTIVE; the last one it had (for the fast-path reuse)
        self.idx: int | None = None
        self.prev_idx: int | None = None
        self.active_cpu: int | None = None
        self._start_raw = 0
        self._mask = 0
        #: sampling: events left until the next sample (perf hwc->period_left)
        self.period = attr.sample_period
        self.period_left = attr.sample_period
        self.samples = 0
        self.closed = False
        #: ground truth accumulated over enabled windows (see PerfSubsystem.truth_source)
        self.truth = 0
        self.truth_start = 0
        self.truth_open = False
        #: the last reason the scheduler left it out (for reports and silent-error causes)
        self.blocked_by: str | None = None

    # ------------------------------------------------------------------------------------
    @property
    def pinned(self) -> bool:
        return self.leader.attr.pinned

    @property
    def is_task_event(self) -> bool:
        return self.task is not None

    @property
    def group(self) -> list[PerfEvent]:
        return [self.leader, *self.leader.siblings]

    def __repr__(self) -> str:
        return f"PerfEvent#{self.id}({self.attr.label()} {self.state.name} idx={self.idx} owner={self.owner})"

    # ---- time accounting -----------------------------------------------------------------
    def _sync(self, now_ns: int) -> None:
        dt = now_ns - self._tstamp
        if dt > 0:
            if self._t_enabled:
                self.enabled_ns += dt
            if self._t_running:
                self.running_ns += dt
        self._tstamp = now_ns

    def _set_ticking(self, now_ns: int, enabled: bool, running: bool) -> None:
        log = self.subsystem.ticking_log
        if log is not None:
            log(self, enabled, running)
        self._sync(now_ns)
        self._t_enabled = enabled
        self._t_running = running

    # ---- live count ------------------------------------------------------------------------
    def _live_delta(self) -> int:
        if self.state != EventState.ACTIVE or self.idx is None:
            return 0
        port = self.subsystem.port(self.active_cpu)  # type: ignore[arg-type]
        raw = self.subsystem.driver.read(port, self.idx)
        return (raw - self._start_raw) & self._mask

    def _fold(self) -> None:
        """Add the live delta to the saved count and restart the delta at the current raw."""
        if self.state == EventState.ACTIVE and self.idx is not None:
            port = self.subsystem.port(self.active_cpu)  # type: ignore[arg-type]
            raw = self.subsystem.driver.read(port, self.idx)
            self.count += (raw - self._start_raw) & self._mask
            self._start_raw = raw

    # ---- public API (host perf ABI) --------------------------------------------------------
    def read(self) -> PerfCount:
        """read(2): value, time_enabled, time_running (ns)."""
        self._check_open()
        self._sync(self.subsystem.now_ns_for(self))
        return PerfCount(self.count + self._live_delta(), self.enabled_ns, self.running_ns)

    def enable(self) -> None:
        """ioctl(PERF_EVENT_IOC_ENABLE): OFF or ERROR -> INACTIVE, then reschedule."""
        self._check_open()
        self.subsystem.enable(self)

    def disable(self) -> None:
        """ioctl(PERF_EVENT_IOC_DISABLE): fold the count and go OFF."""
        self._check_open()
        self.subsystem.disable(self)

    def close(self) -> None:
        """close(2): release the event (perf_event_release_kernel)."""
        if not self.closed:
            self.subsystem.release(self)

    def period_change(self, period: int) -> None:
        """ioctl(PERF_EVENT_IOC_PERIOD) / perf_event_period()."""
        self._check_open()
        self.subsystem.set_period(self, period)

    def _check_open(self) -> None:
        if self.closed:
            raise PerfError(9, "event is closed")  # EBADF
