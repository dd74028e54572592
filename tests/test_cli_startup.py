"""`vpmu plugins` imports only what listing the plugins needs (issue 14: startup), prints
exactly what it printed when every import was eager, and is answered from the listing
cache (vpmu_core/cli/listing_cache.py, docs/cli.md) while its inputs are unchanged.

Every case runs the real entry point in a subprocess. The discovery cases run with the
cache off (`VPMU_CACHE=0`), as is and with the modules the command no longer imports
(structlog, the engine, the hypervisor, the plugins' implementations) imported up front,
as the command used to: both outputs must be byte-identical. The cache cases read which
modules a run imported to tell a cached answer (no discovery) from a fresh one. No sleeps
(inputs are aged with os.utime: the cache ignores inputs modified in the last 2 s) and no
timings here: those are in benchmarks/bench_goals.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

#: what the command used to import and no longer needs to list the plugins
HEAVY = (
    "structlog",
    "asyncio",
    "vpmu_core.host",
    "vpmu_core.engine.machine",
    "vpmu_core.hv.vcpu",
    "vpmu_core.hv.vm",
    "vpmu_core.costs",
    "vpmu_amd_perfmon.models",
    "vpmu_intel_arch.models",
    "vpmu_intel_arch.gracemont",
    "vpmu_intel_archlbr.arch",
    "vpmu_intel_archlbr.legacy",
    "vpmu_mode_emulated.mode",
    "vpmu_mode_mediated.mode",
    "vpmu_mode_xen_lazy.mode",
)

#: what a cached answer must not import (a prefix names a package and its modules)
NOT_WHEN_CACHED = (
    "click",
    "pydantic",
    "pydantic_core",
    "rich",
    "stevedore",
    "pluggy",
    "importlib.metadata",
    "structlog",
    "yaml",
    "numpy",
    "vpmu_core.cli.app",
    "vpmu_core.plugins",  # discovery, records
    "vpmu_core.costs",
    "vpmu_core.cost_fields",
    "vpmu_core.hookspecs",
    "vpmu_core.api",
    "vpmu_amd_perfmon",
    "vpmu_intel_arch",
    "vpmu_intel_archlbr",
    "vpmu_mode_emulated",
    "vpmu_mode_mediated",
    "vpmu_mode_xen_lazy",
    "toyx_plugin",
    "toyx_names",
    "toyx_pkg",
)
DISCOVERY = "vpmu_core.plugins.discovery"

_RUN = textwrap.dedent(
    """
    import importlib, json, os, runpy, sys
    if sys.argv[1] == "eager":
        for m in HEAVY:
            importlib.import_module(m)
    sys.argv = ["vpmu", *sys.argv[2:]]
    code = 0
    try:
        runpy.run_module("vpmu_core.cli.main", run_name="__main__")
    except SystemExit as e:
        code = e.code or 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(2, ("\\nMODULES " + json.dumps(sorted(sys.modules)) + " CODE " + str(code) + "\\n").encode())
    """
).replace("HEAVY", repr(HEAVY))


@dataclass
class Result:
    out: bytes
    err: bytes
    modules: list[str]
    code: int

    @property
    def fresh(self) -> bool:
        """The plugins were discovered (not answered from the cache)."""
        return DISCOVERY in self.modules

    def heavy(self, names: tuple[str, ...]) -> list[str]:
        return [m for m in self.modules if any(m == n or m.startswith(n + ".") for n in names)]


def _clean_env(env: dict[str, str] | None) -> dict[str, str]:
    full = {**os.environ, **(env or {})}
    for k in ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        if k not in (env or {}):
            full.pop(k, None)
    return full


def _parse(stdout: bytes, stderr: bytes) -> Result:
    err, _, tail = stderr.rpartition(b"\nMODULES ")
    mods, _, code = tail.partition(b" CODE ")
    return Result(stdout, err, json.loads(mods), int(code))


def _vpmu(mode: str, *args: str, env: dict[str, str] | None = None, stdout: int | None = None) -> Result:
    r = subprocess.run(
        [sys.executable, "-c", _RUN, mode, *args],
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        env=_clean_env(env),
        timeout=120,
        check=False,
    )
    return _parse(r.stdout or b"", r.stderr)


def _run(mode: str, *args: str, env: dict[str, str] | None = None) -> tuple[str, str, list[str], int]:
    """The discovery cases: the cache off, text out, the HEAVY modules the run imported."""
    r = _vpmu(mode, *args, env={"VPMU_CACHE": "0", **(env or {})})
    return r.out.decode(), r.err.decode(), r.heavy(HEAVY), r.code


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


# ---- the listing cache ---------------------------------------------------------------------
TOYX = textwrap.dedent(
    """
    import os
    from vpmu_core.api import CpuModelSpec, hookimpl
    from toyx_names import SECOND

    @hookimpl
    def vpmu_register_cpu_models(register):
        name = os.environ.get("TOYX_MODEL", "aaa/one")
        register(CpuModelSpec(name=name, vendor="toyx", factory=lambda options: None))
        register(CpuModelSpec(name=SECOND, vendor="toyx", factory=lambda options: None))
    """
)
TOYX_PKG = textwrap.dedent(
    """
    from pathlib import Path
    from vpmu_core.api import CpuModelSpec, hookimpl

    @hookimpl
    def vpmu_register_cpu_models(register):
        name = (Path(__file__).parent / "data" / "name.txt").read_text().strip()
        register(CpuModelSpec(name=name, vendor="toyx", factory=lambda options: None))
    """
)
#: site-relative path -> text (see the `site` fixture)
FILES = {
    "toyx_plugin.py": TOYX,
    "toyx_names.py": 'SECOND = "ddd/two"\n',
    "toyx_pkg/__init__.py": TOYX_PKG,
    "toyx_pkg/data/name.txt": "eee/pkg\n",
}
BROKEN_AT_REGISTER = TOYX.replace('name = os.environ.get("TOYX_MODEL", "aaa/one")', 'raise RuntimeError("no")')
assert BROKEN_AT_REGISTER != TOYX

ARGS = {"table": ("plugins",), "json": ("plugins", "--json")}


def _age(*paths: Path, seconds: float = 100.0, ns: int | None = None) -> int:
    """Set mtime (and atime) `seconds` in the past, or to `ns`; returns the mtime set."""
    t = ns if ns is not None else time.time_ns() - int(seconds * 1e9)
    for p in paths:
        os.utime(p, ns=(t, t))
    return t


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder on PYTHONPATH holding two extra plugins, aged past the cache's 2 s window:
    `toyx` (a module; its second model's name comes from another module, `toyx_names`) and
    `toyx_pkg` (a package registering a model named by a data file in it)."""
    d = tmp_path / "site"
    (d / "toyx_pkg" / "data").mkdir(parents=True)
    for rel, text in FILES.items():
        (d / rel).write_text(text)
    _age(*(d / rel for rel in FILES), d / "toyx_pkg" / "data", d / "toyx_pkg", d)
    return d


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    d = tmp_path / "cache"
    d.mkdir()
    return d


def _env(site: Path, cache: Path, **extra: str) -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p),
        "VPMU_EXTRA_PLUGINS": "toyx=toyx_plugin,toyx_pkg=toyx_pkg",
        "VPMU_CACHE_DIR": str(cache),
        # a same-size rewrite with its mtime put back would fool Python's own .pyc check
        "PYTHONDONTWRITEBYTECODE": "1",
        "VPMU_CACHE": "1",
        **extra,
    }


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.endswith(".listing"))


def _cached(*args: str, env: dict[str, str]) -> Result:
    """Run twice: the first run stores, the second must be the cached answer."""
    first = _vpmu("lazy", *args, env=env)
    assert first.code == 0 and first.fresh and first.err == b"", first.err
    second = _vpmu("lazy", *args, env=env)
    assert not second.fresh, "the second run was not answered from the cache"
    assert second.out == first.out
    return second


@pytest.mark.parametrize("args", list(ARGS.values()), ids=list(ARGS))
def test_a_cached_run_imports_none_of_the_discovery(args: tuple[str, ...], site: Path, cache: Path) -> None:
    second = _cached(*args, env=_env(site, cache))
    assert second.code == 0 and second.err == b""
    assert second.heavy(NOT_WHEN_CACHED) == []


@pytest.mark.parametrize(
    "args,columns",
    [(ARGS["table"], None), (ARGS["table"], "90"), (ARGS["json"], None)],
    ids=["table", "table-90-columns", "json"],
)
def test_cached_output_is_byte_identical_to_uncached(
    args: tuple[str, ...], columns: str | None, site: Path, cache: Path
) -> None:
    extra = {"COLUMNS": columns} if columns else {}
    off = _vpmu("lazy", *args, env=_env(site, cache, VPMU_CACHE="0", **extra))
    assert off.code == 0 and off.fresh and b"aaa/one" in off.out
    assert _entries(cache) == [], "VPMU_CACHE=0 stored an entry"
    env = _env(site, cache, **extra)
    first = _vpmu("lazy", *args, env=env)
    second = _vpmu("lazy", *args, env=env)
    assert first.fresh and not second.fresh
    assert off.out == first.out == second.out
    assert off.err == first.err == second.err == b""
    assert off.code == first.code == second.code == 0


def test_vpmu_cache_0_turns_a_stored_entry_off(site: Path, cache: Path) -> None:
    _cached("plugins", "--json", env=_env(site, cache))
    assert _vpmu("lazy", "plugins", "--json", env=_env(site, cache, VPMU_CACHE="0")).fresh


@pytest.mark.parametrize("mtime", ["new mtime", "mtime put back"])
@pytest.mark.parametrize(
    "rel,old,new",
    [
        ("toyx_plugin.py", "aaa/one", "bbb/one"),
        ("toyx_names.py", "ddd/two", "fff/two"),
        ("toyx_pkg/data/name.txt", "eee/pkg", "ggg/pkg"),
    ],
    ids=["the plugin module", "a module it imports", "a data file of its package"],
)
def test_a_same_size_change_gives_a_fresh_discovery(
    rel: str, old: str, new: str, mtime: str, site: Path, cache: Path
) -> None:
    env = _env(site, cache)
    changed = site / rel
    before = _cached("plugins", "--json", env=env)
    assert old.encode() in before.out
    old_mtime, size = changed.stat().st_mtime_ns, changed.stat().st_size
    changed.write_text(FILES[rel].replace(old, new))
    assert changed.stat().st_size == size
    if mtime == "new mtime":
        _age(changed, seconds=50)
    else:
        _age(changed, ns=old_mtime)  # only ctime tells
    after = _vpmu("lazy", "plugins", "--json", env=env)
    assert after.fresh
    assert new.encode() in after.out and old.encode() not in after.out


NEW_PLUGIN = TOYX_PKG.replace('(Path(__file__).parent / "data" / "name.txt").read_text().strip()', '"new/one"')


def _install(site: Path, version: str = "0.0.1") -> Path:
    """A distribution `vpmu-newp` whose entry point `newp` names the module `newp_plugin`."""
    (site / "newp_plugin.py").write_text(NEW_PLUGIN)
    dist = site / "vpmu_newp-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vpmu-newp\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text("[vpmu.plugins]\nnewp = newp_plugin\n")
    _age(site / "newp_plugin.py", dist / "METADATA", dist / "entry_points.txt", dist)
    return dist


@pytest.mark.parametrize("change", ["installed", "version bumped"])
def test_an_installed_distribution_change_gives_a_fresh_discovery(change: str, site: Path, cache: Path) -> None:
    env = _env(site, cache)
    if change == "version bumped":
        dist = _install(site)
        _age(site)
    before = _cached("plugins", "--json", env=env)
    site_mtime = site.stat().st_mtime_ns
    if change == "installed":
        _install(site)
        _age(site, ns=site_mtime)  # only the folder's ctime tells
    else:
        metadata = dist / "METADATA"
        old = metadata.stat().st_mtime_ns
        metadata.write_text(metadata.read_text().replace("0.0.1", "0.0.2"))  # the same size
        _age(metadata, ns=old)  # only its ctime tells
    after = _vpmu("lazy", "plugins", "--json", env=env)
    assert after.fresh and after.code == 0
    rows = {p["name"]: p for p in json.loads(after.out)}
    assert rows["newp"]["status"] == "loaded" and rows["newp"]["dist"] == "vpmu-newp"
    assert rows["newp"]["version"] == ("0.0.1" if change == "installed" else "0.0.2")
    assert after.out != before.out


@pytest.mark.parametrize(
    "var,value,shows",
    [("TOYX_MODEL", "ccc/one", b"ccc/one"), ("VPMU_DISABLE_PLUGINS", "mode_xen_lazy", None)],
    ids=["read by a plugin", "read by discovery"],
)
def test_an_environment_change_gives_a_fresh_discovery(
    var: str, value: str, shows: bytes | None, site: Path, cache: Path
) -> None:
    before = _cached("plugins", "--json", env=_env(site, cache))
    after = _vpmu("lazy", "plugins", "--json", env=_env(site, cache, **{var: value}))
    assert after.fresh and after.code == 0
    assert after.out != before.out
    if shows is not None:
        assert shows in after.out
    else:
        assert b"mode_xen_lazy" in before.out and b"mode_xen_lazy" not in after.out


@pytest.mark.parametrize("how", ["import", "register"])
def test_a_failing_plugin_is_never_cached(how: str, site: Path, cache: Path) -> None:
    if how == "import":
        env = _env(site, cache, VPMU_EXTRA_PLUGINS="toyx=toyx_plugin,toyx_pkg=toyx_pkg,broken=no_such_module_xyz")
    else:
        (site / "broken_plugin.py").write_text(BROKEN_AT_REGISTER)
        _age(site / "broken_plugin.py", site)
        env = _env(site, cache, VPMU_EXTRA_PLUGINS="toyx=toyx_plugin,toyx_pkg=toyx_pkg,broken=broken_plugin")
    for _ in range(2):
        r = _vpmu("lazy", "plugins", "--json", env=env)
        assert r.code == 0 and r.fresh
        assert {p["name"]: p["status"] for p in json.loads(r.out)}["broken"] == "failed"
    assert _entries(cache) == []


def test_a_listing_that_starts_failing_is_not_served_from_the_cache(site: Path, cache: Path) -> None:
    env = _env(site, cache)
    _cached("plugins", "--json", env=env)
    (site / "toyx_plugin.py").write_text(BROKEN_AT_REGISTER)
    _age(site / "toyx_plugin.py")
    for _ in range(2):
        r = _vpmu("lazy", "plugins", "--json", env=env)
        assert r.fresh and {p["name"]: p["status"] for p in json.loads(r.out)}["toyx"] == "failed"
    assert _entries(cache) == []


def test_an_input_modified_in_the_last_2_seconds_is_not_stored(site: Path, cache: Path) -> None:
    env = _env(site, cache)
    os.utime(site / "toyx_plugin.py")  # now
    assert _vpmu("lazy", "plugins", "--json", env=env).fresh
    assert _entries(cache) == []
    _age(site / "toyx_plugin.py")
    _cached("plugins", "--json", env=env)
    assert len(_entries(cache)) == 1


@pytest.mark.parametrize("where", ["under a file", "a file"])
def test_an_unwritable_cache_dir_is_fine(where: str, site: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder\n")
    cache_dir = blocker / "vpmu" if where == "under a file" else blocker
    reference = _vpmu("lazy", "plugins", env=_env(site, tmp_path, VPMU_CACHE="0"))
    for _ in range(2):
        r = _vpmu("lazy", "plugins", env={**_env(site, tmp_path), "VPMU_CACHE_DIR": str(cache_dir)})
        assert (r.code, r.out, r.err) == (0, reference.out, b"")
        assert r.fresh
    assert blocker.read_text() == "not a folder\n"


@pytest.mark.parametrize("var,value", [("FORCE_COLOR", "1"), ("COLUMNS", "wide"), ("TTY_COMPATIBLE", "1")])
def test_a_table_sized_by_the_terminal_is_not_cached(var: str, value: str, site: Path, cache: Path) -> None:
    env = _env(site, cache, **{var: value})
    for _ in range(2):
        assert _vpmu("lazy", "plugins", env=env).fresh
    assert _entries(cache) == []


def _drain(fd: int, chunks: list[bytes]) -> None:
    """Read a pseudo-terminal's master side until the other side is closed."""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the slave side is closed
            return
        if not data:
            return
        chunks.append(data)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_a_terminal_on_stdout_is_not_cached(site: Path, cache: Path) -> None:
    env = _env(site, cache)
    for _ in range(2):
        try:
            master, slave = os.openpty()
        except OSError as e:  # a container without pseudo-terminals
            pytest.skip(f"no pseudo-terminal: {e}")
        chunks: list[bytes] = []
        reader = threading.Thread(target=_drain, args=(master, chunks))
        reader.start()
        try:
            r = _vpmu("lazy", "plugins", "--json", env=env, stdout=slave)
        finally:
            os.close(slave)
            reader.join(timeout=60)
            os.close(master)
        assert r.code == 0 and r.fresh
        assert b"toyx" in b"".join(chunks)
    assert _entries(cache) == []


@pytest.mark.parametrize("args", list(ARGS.values()), ids=list(ARGS))
def test_a_closed_pipe_on_stdout_is_reported_as_without_the_cache(
    args: tuple[str, ...], site: Path, cache: Path
) -> None:
    """The cached answer cannot be written: the command runs uncached and says what it
    says without the cache (rich exits 1 quietly for the table, the JSON names the pipe)."""
    _cached(*args, env=_env(site, cache))
    seen = []
    for switch in ("1", "0"):
        r, w = os.pipe()
        os.close(r)
        try:
            res = _vpmu("lazy", *args, env=_env(site, cache, VPMU_CACHE=switch), stdout=w)
        finally:
            os.close(w)
        seen.append((res.code, res.err))
    assert seen[0] == seen[1]
    assert seen[0][0] == 1
