"""The golden-report corpus, byte for byte (see tests/golden_corpus.py; `make goldens`).

A refactor or speed-up must leave every file identical; a behaviour fix regenerates them in
the same commit, whose message says which numbers moved and why.
"""

from __future__ import annotations

import pytest

from tests.golden_corpus import GOLDEN_DIR, cases, golden_path, render

CASES = cases()


def test_corpus_covers_every_shipped_scenario_and_mode():
    on_disk = set(GOLDEN_DIR.glob("*.json"))
    wanted = {golden_path(s, m) for s, m in CASES}
    assert wanted - on_disk == set(), "missing goldens: run `make goldens`"
    assert on_disk - wanted == set(), "stale goldens: run `make goldens`"
    assert len({s for s, _ in CASES}) >= 18


@pytest.mark.parametrize(("scenario", "mode"), CASES, ids=[f"{s}@{m}" for s, m in CASES])
def test_report_is_byte_identical_to_golden(scenario, mode):
    expected = golden_path(scenario, mode).read_text(encoding="utf-8")
    got = render(scenario, mode)
    if got != expected:
        import difflib

        diff = "".join(difflib.unified_diff(expected.splitlines(True), got.splitlines(True), "golden", "now", n=1))
        pytest.fail(f"{scenario} under {mode} differs from its golden (make goldens after review):\n{diff[:4000]}")
