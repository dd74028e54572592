"""pytest11 entry point of the conformance kit: light and passive (pitfall P15).

Nothing is discovered or configured at import. Fixtures are opt-in by name. Registering
the kit module for assertion rewriting here (before any test module imports it) gives the
kit's asserts their diffs (pitfall P14).
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.register_assert_rewrite("vpmu_core.testing.conformance")


@pytest.fixture
def vpmu_compose() -> Any:
    """A `compose` that builds hosts from explicitly named plugins."""
    from vpmu_core import compose

    return compose
