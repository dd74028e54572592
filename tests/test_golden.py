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


#: the scenarios where tracing used to change the numbers (it turned the coalescing of exits
#: off: 11 of the emulated goldens differed, cloud_mix by 2 guest samples)
TRACED = [
    ("cloud_mix", "emulated"),
    ("emulated-gap-3.2-case3", "emulated"),
    ("emulated-guest-mux-10", "emulated"),
    ("cloud_mix", "mediated:switch_at=run_loop"),
]


@pytest.mark.parametrize(("scenario", "mode"), TRACED, ids=[f"{s}@{m}" for s, m in TRACED])
def test_tracing_a_run_does_not_change_its_report(scenario, mode):
    """`vpmu trace` and `vpmu plot` record the same run `vpmu run` reports: watching a run
    must not change it (every exit is handled one by one, traced or not)."""
    from vpmu_core.cli.app import dumps, load_catalog
    from vpmu_core.scenario.loader import load
    from vpmu_core.scenario.runner import run_scenario

    cat = load_catalog()
    scn, _ = load(scenario, mode=mode, catalog=cat)
    traced = run_scenario(scn, catalog=cat, trace=True)
    assert traced.timeline is not None
    assert dumps(traced.report) == golden_path(scenario, mode).read_text(encoding="utf-8")
