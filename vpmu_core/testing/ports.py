"""Driver ports and stub CPUs for tests without an engine (no pytest needed)."""

from __future__ import annotations

from typing import Any


class PhysicalPort:
    """A PMU as a driver port, for checks without an engine (CPUID from `table`, by default
    the host's)."""

    def __init__(self, model: Any, pmu: Any, table: Any = None) -> None:
        self.model, self.pmu = model, pmu
        self.table = model.cpuid_table(None) if table is None else table

    def rdmsr(self, msr: int) -> int:
        return self.pmu.rdmsr(msr)

    def wrmsr(self, msr: int, value: int) -> None:
        self.pmu.wrmsr(msr, value)

    def rdpmc(self, ecx: int) -> int:
        return self.pmu.rdpmc(ecx)

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        return self.table.get(leaf, subleaf)

    @property
    def entry_loads(self) -> dict[int, int]:
        """The physical PMU's VM-entry loads, as the engine's port shows them."""
        return self.pmu.entry_loads

    def set_entry_loads(self, loads: dict[int, int]) -> None:
        self.pmu.set_entry_loads(loads)


class StubCpu:
    """The `PerfCpu` a `PerfSubsystem` needs, without an engine: an index, a port, no task
    and a clock the test sets (`ns`)."""

    def __init__(self, index: int, port: Any) -> None:
        self.index = index
        self.port = port
        self.current_task: Any = None
        self.ns = 0

    def now_ns(self) -> int:
        return self.ns
