"""The golden-report corpus: every shipped scenario under every KVM mode and placement.

Each golden is the exact bytes `vpmu run SCENARIO --mode MODE --json` prints (a scenario a
mode refuses stores the refusal message instead), so a reviewer can reproduce any file with
the command and `git diff` shows which numbers a change moved. `make goldens` rewrites
them (python -m tests.golden_corpus); tests/test_golden.py checks them byte for byte.

Hand-written rather than a snapshot library: the file must be the command's own output,
not a re-serialisation of it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOLDEN_DIR = Path(__file__).parent / "golden"
#: the KVM designs the corpus covers: the perf-based vPMU and the mediated vPMU in each placement
MODES = ("emulated", "mediated:switch_at=run_loop", "mediated:switch_at=exit", "mediated:switch_at=vcpu_run")


def scenario_names() -> list[str]:
    from vpmu_core.cli.app import load_catalog
    from vpmu_core.scenario.loader import available_scenarios

    return sorted(available_scenarios(load_catalog()))


def cases() -> list[tuple[str, str]]:
    return [(s, m) for s in scenario_names() for m in MODES]


def golden_path(scenario: str, mode: str) -> Path:
    return GOLDEN_DIR / f"{scenario}@{mode.replace(':', '-').replace('=', '-')}.json"


def render(scenario: str, mode: str) -> str:
    """What `vpmu run SCENARIO --mode MODE --json` prints, or the refusal it exits 2 with."""
    from vpmu_core.cli.app import dumps, load_catalog
    from vpmu_core.errors import ConfigError
    from vpmu_core.scenario.loader import ScenarioError, load
    from vpmu_core.scenario.runner import run_scenario

    cat = load_catalog()
    try:
        scn, _ = load(scenario, mode=mode, catalog=cat)
        report = run_scenario(scn, catalog=cat).report
    except (ConfigError, ScenarioError) as e:
        return json.dumps({"refused": str(e)}, indent=2) + "\n"
    return dumps(report)


def regenerate() -> list[Path]:
    """Rewrite the corpus; returns the files that changed (stale files are removed)."""
    GOLDEN_DIR.mkdir(exist_ok=True)
    wanted = {golden_path(s, m): (s, m) for s, m in cases()}
    changed = []
    for stale in sorted(set(GOLDEN_DIR.glob("*.json")) - set(wanted)):
        stale.unlink()
        changed.append(stale)
    for path, (s, m) in wanted.items():
        text = render(s, m)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


if __name__ == "__main__":
    for p in regenerate():
        print(f"changed: {p.relative_to(Path.cwd()) if p.is_relative_to(Path.cwd()) else p}")
    sys.exit(0)
