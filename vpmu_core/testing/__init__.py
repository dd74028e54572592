"""The conformance kit for third-party vendor and mode plugins (see docs/testing-plugins.md)."""

import pytest

pytest.register_assert_rewrite("vpmu_core.testing.conformance")
