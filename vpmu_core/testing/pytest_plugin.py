"""pytest11 entry point of the conformance kit: light and passive (pitfall P15).

Nothing is discovered or configured at import. Fixtures are opt-in by name.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def vpmu_compose():
    """A `compose` that builds hosts from explicitly named plugins."""
    from vpmu_core import compose

    return compose
