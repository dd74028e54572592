"""The conformance kit for third-party vendor and mode plugins (see docs/testing-plugins.md).

Importing this package needs no pytest: `toy` (a vendor and the `reference` mode),
`PhysicalPort`, `StubCpu` and `LeakChecker` are plain modules. The pytest parts
(`vpmu_core.testing.conformance`, the fixtures of `pytest_plugin`) load only under pytest,
where the `pytest11` entry point registers the kit for assertion rewriting.
"""

from __future__ import annotations

import sys

from vpmu_core.testing.leakcheck import LeakChecker
from vpmu_core.testing.ports import PhysicalPort, StubCpu

_pytest = sys.modules.get("pytest")
if _pytest is not None:  # under pytest without plugin autoload (pitfall P14)
    _pytest.register_assert_rewrite("vpmu_core.testing.conformance")

__all__ = ["LeakChecker", "PhysicalPort", "StubCpu"]
