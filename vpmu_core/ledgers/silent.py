"""Silent errors and leaks, recorded by the engine as they happen."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SilentInterval:
    """A guest counter (or facility) enabled in the guest's view but not counting."""

    owner: str
    counter: str
    start_ns: int
    end_ns: int | None
    cause: str

    def duration(self, now_ns: int) -> int:
        return (self.end_ns if self.end_ns is not None else now_ns) - self.start_ns


class SilentErrors:
    """Open/close intervals per (owner, counter); a mode reports state, the tracker keeps time."""

    def __init__(self) -> None:
        self.intervals: list[SilentInterval] = []
        self._open: dict[tuple[str, str], SilentInterval] = {}

    def update(self, owner: str, counter: str, silent: bool, cause: str, now_ns: int) -> None:
        key = (owner, counter)
        cur = self._open.get(key)
        if silent:
            if cur is not None and cur.cause == cause:
                return
            if cur is not None:
                cur.end_ns = now_ns
            iv = SilentInterval(owner, counter, now_ns, None, cause)
            self.intervals.append(iv)
            self._open[key] = iv
        elif cur is not None:
            cur.end_ns = now_ns
            del self._open[key]

    def open_intervals(self) -> list[SilentInterval]:
        return list(self._open.values())


@dataclass
class Leak:
    where: str
    what: str
    time_ns: int


class LeakLog:
    """Leak checks run by modes at every context switch; `checks` counts them."""

    def __init__(self) -> None:
        self.checks = 0
        self.leaks: list[Leak] = []

    def check(self, ok: bool, where: str, what: str, now_ns: int) -> None:
        self.checks += 1
        if not ok:
            self.leaks.append(Leak(where, what, now_ns))
