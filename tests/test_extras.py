"""matplotlib and dask.distributed are extras (`vpmu[plot]`, `vpmu[sweep]`): only `vpmu plot`
and the parallel `vpmu sweep` need them, and without them those commands print one line that
names the extra and exit 2.

The missing module is simulated in a subprocess: a meta-path finder installed before the CLI
starts makes `import matplotlib` (or `distributed`) fail as it does when the distribution is
not installed (ModuleNotFoundError, `e.name` the module), or as a broken install does.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vpmu_core.cli.extras import EXTRAS

TOY_ENV = {"VPMU_EXTRA_PLUGINS": "toy=vpmu_core.testing.toy"}
SCENARIO = """\
name: toy-extras
cpu: toy/basic
mode: reference
cpus: 1
duration_ns: 1_000_000
vms:
  - name: vm0
    vcpus: 1
    work:
      - work: {instructions: 100_000}
    perf:
      - name: stat
        events: [instructions]
"""

BOOT = textwrap.dedent(
    """\
    import sys

    BLOCKED, BROKEN = set(sys.argv[1].split(",")) - {""}, sys.argv[2] == "broken"

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in BLOCKED:
                if BROKEN:
                    raise ImportError(f"{top} is broken here")
                raise ModuleNotFoundError(f"No module named {top!r}", name=top)
            return None

    sys.meta_path.insert(0, Blocker())
    from vpmu_core.cli.main import main

    try:
        main(sys.argv[3:])
    finally:
        imported = sorted(m for m in BLOCKED if m in sys.modules)
        assert not imported, f"blocked modules were imported: {imported}"
    """
)


def vpmu_without(blocked: str, *args: str, broken: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **TOY_ENV, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", BOOT, blocked, "broken" if broken else "absent", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture
def scn(tmp_path: Path) -> Path:
    p = tmp_path / "toy.yaml"
    p.write_text(SCENARIO)
    return p


def test_plot_without_matplotlib_names_the_plot_extra(scn: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.png"
    r = vpmu_without("matplotlib", "plot", str(scn), "-o", str(out), "-q")
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        "vpmu: error: `vpmu plot` needs matplotlib, which is not installed: "
        "install the plot extra, pip install 'vpmu[plot]'\n"
    )
    assert r.stdout == ""
    assert not out.exists()


def test_parallel_sweep_without_distributed_names_the_sweep_extra(scn: Path) -> None:
    r = vpmu_without("distributed", "sweep", str(scn), "--grid", "seed=1,2", "-j", "2", "-q")
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        "vpmu: error: `vpmu sweep` needs dask.distributed, which is not installed: "
        "install the sweep extra, pip install 'vpmu[sweep]'\n"
    )
    assert r.stdout == ""


def test_broken_install_says_it_cannot_be_imported(scn: Path, tmp_path: Path) -> None:
    r = vpmu_without("matplotlib", "plot", str(scn), "-o", str(tmp_path / "t.png"), "-q", broken=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        "vpmu: error: `vpmu plot` needs matplotlib, which cannot be imported (matplotlib is broken here): "
        "install the plot extra, pip install 'vpmu[plot]'\n"
    )


def test_commands_without_the_extras_need_neither(scn: Path, tmp_path: Path) -> None:
    """run, compare, trace and an in-process sweep (-j 1) import neither module (BOOT fails
    if one was imported)."""
    blocked = "matplotlib,distributed,dask"
    for args in (
        ("run", str(scn), "-q"),
        ("compare", str(scn), "--modes", "reference,reference", "-q"),
        ("trace", str(scn), "-o", str(tmp_path / "t.json"), "-q"),
        ("sweep", str(scn), "--grid", "seed=1,2", "-j", "1", "-q"),
        ("plugins",),
    ):
        r = vpmu_without(blocked, *args)
        assert r.returncode == 0, (args, r.stderr)


def test_the_extras_exist_in_the_distribution_metadata() -> None:
    """Each extra the message names is declared, brings its module's distribution, and that
    distribution is not a core dependency (else the extra would be pointless). The import
    name is the distribution name for both (matplotlib, distributed)."""
    requires = md.requires("vpmu") or []
    for extra, (module, _dist) in EXTRAS.items():
        marker = re.compile(rf"""extra\s*==\s*["']{extra}["']""")
        reqs = [r for r in requires if marker.search(r)]
        assert reqs, f"vpmu declares no [{extra}] extra"
        provides = {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in reqs}
        assert module in provides, f"vpmu[{extra}] does not bring {module} (it brings {sorted(provides)})"
        core = [r for r in requires if "extra ==" not in r]
        assert not any(re.match(rf"{module}\b", r, re.I) for r in core), f"{module} is a core dependency"
