"""`vpmu plugins` imports only what listing the plugins needs (issue 14: startup), and
prints exactly what it printed when every import was eager.

Each case runs the real entry point in a subprocess twice: as is, and with the modules it
no longer imports (structlog, the engine, the hypervisor, the composition root) imported
up front, as the command used to; both outputs must be byte-identical. No timings here:
those are in benchmarks/bench_goals.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: what the command used to import and no longer needs to list the plugins
HEAVY = ("structlog", "asyncio", "vpmu_core.host", "vpmu_core.engine.machine", "vpmu_core.hv.vcpu", "vpmu_core.hv.vm")

_RUN = textwrap.dedent(
    """
    import json, runpy, sys
    eager = sys.argv[1] == "eager"
    if eager:
        import structlog, asyncio, vpmu_core.host, vpmu_core.engine.machine, vpmu_core.hv.vcpu, vpmu_core.hv.vm
    sys.argv = ["vpmu", *sys.argv[2:]]
    code = 0
    try:
        runpy.run_module("vpmu_core.cli.main", run_name="__main__")
    except SystemExit as e:
        code = e.code or 0
    sys.stdout.flush()
    heavy = [m for m in HEAVY if m in sys.modules]
    sys.stderr.write("\\nMODULES " + json.dumps(heavy) + " CODE " + str(code) + "\\n")
    """
).replace("HEAVY", repr(HEAVY))


def _run(mode: str, *args: str, env: dict[str, str] | None = None) -> tuple[str, str, list[str], int]:
    full = {**os.environ, **(env or {})}
    full.pop("COLUMNS", None)
    r = subprocess.run([sys.executable, "-c", _RUN, mode, *args], capture_output=True, text=True, env=full)
    err, _, tail = r.stderr.rpartition("\nMODULES ")
    mods, _, code = tail.partition(" CODE ")
    return r.stdout, err, json.loads(mods), int(code)


ENVS = {
    "installed": {},
    "broken extra": {"VPMU_EXTRA_PLUGINS": "toy=vpmu_core.testing.toy,broken=no_such_module_xyz"},
    "some disabled": {"VPMU_DISABLE_PLUGINS": "mode_emulated,intel_archlbr"},
}


@pytest.mark.parametrize("args", [("plugins",), ("plugins", "--json")], ids=["table", "json"])
@pytest.mark.parametrize("env", list(ENVS), ids=list(ENVS))
def test_plugins_prints_what_the_eager_command_printed(args: tuple[str, ...], env: str) -> None:
    lazy_out, lazy_err, lazy_mods, lazy_code = _run("lazy", *args, env=ENVS[env])
    eager_out, eager_err, _, eager_code = _run("eager", *args, env=ENVS[env])
    assert (lazy_out, lazy_err, lazy_code) == (eager_out, eager_err, eager_code)
    assert lazy_code == 0 and lazy_out
    assert lazy_mods == [], f"`vpmu {' '.join(args)}` imported {lazy_mods}"


def test_broken_plugin_is_listed_as_failed_without_heavy_imports() -> None:
    out, _, mods, code = _run("lazy", "plugins", "--json", env=ENVS["broken extra"])
    rows = {p["name"]: p for p in json.loads(out)}
    assert code == 0 and rows["broken"]["status"] == "failed"
    assert "No module named 'no_such_module_xyz'" in rows["broken"]["load_error"]
    assert rows["toy"]["status"] == "loaded"
    assert mods == []


def test_a_plugin_using_structlog_still_logs_through_the_command_handler(tmp_path: Path) -> None:
    """structlog is configured when something imports it: a plugin that logs with it at
    registration prints the same line on stderr as when the command configured it eagerly."""
    (tmp_path / "slog_plugin.py").write_text(
        textwrap.dedent(
            """
            import structlog
            from vpmu_core.api import hookimpl

            @hookimpl
            def vpmu_register_scenarios(register):
                structlog.get_logger("slog_plugin").warning("slog.hello", answer=42)
            """
        )
    )
    env = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "VPMU_EXTRA_PLUGINS": "slog=slog_plugin",
    }
    lazy = _run("lazy", "plugins", "--json", env=env)
    eager = _run("eager", "plugins", "--json", env=env)
    assert lazy[:2] == eager[:2]
    assert "vpmu WARNING slog_plugin: event='slog.hello' answer=42 level='warning'" in lazy[1]
