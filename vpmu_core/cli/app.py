"""The `vpmu` command (DESIGN §6): the click application. See docs/cli.md.

The entry point is `vpmu_core.cli.main:main`, which imports this module only when the
command needs it.

Exit codes: 0 ok, 1 the run failed, 2 usage or input error (nothing written).
Logging: structlog is configured here only (warnings to stderr; `-v` info, `-vv` debug).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, cast

import click
from pydantic import ValidationError

from vpmu_core.errors import ConfigError
from vpmu_core.logs import get_logger

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: testing aid: extra plugin modules registered as if installed ("name=module,name=module")
EXTRA_PLUGINS_ENV = "VPMU_EXTRA_PLUGINS"

log = get_logger("vpmu.cli")


# ---- logging, catalog, errors --------------------------------------------------------------
def configure_logging(verbosity: int) -> None:
    """The library logs through stdlib-backed structlog (vpmu_core/logs.py) and is silent
    until an application configures logging: warnings to stderr, `-v` info, `-vv` debug."""
    import logging

    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vpmu %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # plugins that call structlog.get_logger() directly go through the same stdlib handler;
    # importing structlog costs more than starting Python, so it is configured when
    # something imports it (the library itself never does)
    if "structlog" in sys.modules:
        _configure_structlog(sys.modules["structlog"])
    elif not any(isinstance(f, _ConfigureStructlogOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _ConfigureStructlogOnImport())


def _configure_structlog(structlog: Any) -> None:
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.add_log_level,
            structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=True),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


class _ConfigureStructlogOnImport:
    """A one-shot meta path finder: the first `import structlog` runs as usual, then
    configures it (`_configure_structlog`) before the importer sees the module."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "structlog":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = cast(Any, _ConfiguringLoader(spec.loader))
        return spec


class _ConfiguringLoader:
    """structlog's own loader, configuring the module once it has executed."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        _configure_structlog(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def load_catalog() -> Any:
    """Installed plugins plus `VPMU_EXTRA_PLUGINS` modules (a testing aid, see docs/cli.md)."""
    from vpmu_core.plugins.discovery import build_catalog, entry_point_dists, load_entry_points
    from vpmu_core.plugins.records import PluginRecord

    dists = entry_point_dists()  # one scan of the installed metadata for both steps
    loaded, failures = load_entry_points(dists=dists)
    names = {n for n, _ in loaded}
    for item in filter(None, (p.strip() for p in os.environ.get(EXTRA_PLUGINS_ENV, "").split(","))):
        name, _, mod = item.partition("=")
        name, mod = name.strip(), (mod or name).strip()
        if name in names:
            continue
        try:
            loaded.append((name, importlib.import_module(mod)))
            names.add(name)
        except Exception as e:  # a broken extra plugin is listed, never fatal
            failures.append(PluginRecord(name=name, status="failed", load_error=f"{type(e).__name__}: {e}"))
    return build_catalog(loaded, failures, dists=dists)


_CATALOG: Any = None


def catalog() -> Any:
    global _CATALOG
    if _CATALOG is None:
        _CATALOG = load_catalog()
    return _CATALOG


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"vpmu: {'error' if code == EXIT_USAGE else 'run failed'}: {message}", err=True)
    sys.exit(code)


def require_extra(extra: str, command: str) -> None:
    """Exit 2 with one line naming the extra (`vpmu[plot]`, `vpmu[sweep]`) when the optional
    dependency `command` needs is not installed (vpmu_core.cli.extras)."""
    from vpmu_core.cli.extras import missing_extra_message

    message = missing_extra_message(extra, command)
    if message is not None:
        fail(message)


@contextmanager
def input_errors(source: str = "") -> Iterator[None]:
    """Map input errors to exit 2 (one message naming the file) and run errors to exit 1."""
    from vpmu_core.scenario.loader import ScenarioError

    try:
        yield
    except ScenarioError as e:
        fail(str(e))
    except ConfigError as e:
        fail(f"{source}: {e}" if source else str(e))
    except ValidationError as e:
        fail(f"{source}: {e}" if source else str(e))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        log.debug("run.failed", exc_info=True)
        fail(f"{type(e).__name__}: {e}", EXIT_FAILED)


def dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


def out(text: str) -> None:
    """The command's output on stdout (errors there: one line, exit 1; see cli/output.py)."""
    from vpmu_core.cli.output import require_stdout

    require_stdout()
    click.echo(text, nl=False)


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    if not stderr:
        from vpmu_core.cli.output import require_stdout

        require_stdout()
    c = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c = Console(stderr=stderr, highlight=False, soft_wrap=False, width=160)
    return c


class _Progress:
    """A rich progress bar on stderr that appears only once a run has taken over a second."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.label = label
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, now_ns: int, total_ns: int) -> None:
        if 2 * now_ns >= total_ns:
            from vpmu_core.cli.output import signal_hook

            signal_hook("progress")
        if self.quiet:
            return
        if self.bar is None:
            if time.monotonic() - self.t0 < 1.0:
                return
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>5.1f}% simulated"),
                TimeElapsedColumn(),
                console=console(stderr=True),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=total_ns)
        self.bar.update(self.task, completed=now_ns)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---- the group -----------------------------------------------------------------------------
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class VpmuGroup(click.Group):
    """The root group: Ctrl-C is one line and exit 130 (not click's "Aborted!" with a
    blank line, nor a traceback); a closed or full stdout is one line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        from vpmu_core.cli.output import stdout_errors

        try:
            with stdout_errors():
                return super().invoke(ctx)
        except KeyboardInterrupt:
            try:
                sys.stderr.write("vpmu: interrupted\n")
                sys.stderr.flush()
            except OSError:
                pass
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=VpmuGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
@click.version_option(package_name="vpmu", prog_name="vpmu")
def cli(verbose: int) -> None:
    """vpmu: a deterministic model of x86 PMU virtualization (emulated vs mediated vPMU)."""
    configure_logging(verbose)


# ---- discovery commands ----------------------------------------------------------------------
def _plugin_rows(cat: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": p.name,
            "dist": p.dist,
            "version": p.version,
            "status": p.status,
            "provides": {k: list(v) for k, v in sorted(p.provides.items())},
            "hooks": list(p.hooks),
            "load_error": p.load_error,
        }
        for p in cat.plugins
    ]


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """Installed plugins: distribution, version, what each provides, hooks, load errors."""
    rows = _plugin_rows(catalog())
    if as_json:
        out(dumps(rows))
        return
    from rich.table import Table

    t = Table(title="vpmu plugins", title_justify="left", header_style="bold")
    for c in ("name", "distribution", "version", "status", "provides", "hooks"):
        t.add_column(c)
    for r in rows:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["provides"].items())
        status = r["status"] if r["status"] == "loaded" else f"FAILED: {r['load_error']}"
        t.add_row(r["name"], r["dist"] or "-", r["version"] or "-", status, provides, ", ".join(r["hooks"]))
    if not rows:
        click.echo("no vpmu plugins installed (entry point group 'vpmu.plugins')")
        return
    console().print(t)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json: bool) -> None:
    """CPU models and facilities that can be composed, with their options."""
    cat = catalog()
    data = {
        "cpu_models": [
            {"name": n, "vendor": s.vendor, "plugin": s.plugin, "description": s.description, "options": s.options}
            for n, s in sorted(cat.cpu_models.items())
        ],
        "facilities": [
            {"name": n, "plugin": s.plugin, "description": s.description, "options": s.options}
            for n, s in sorted(cat.facilities.items())
        ],
    }
    if as_json:
        out(dumps(data))
        return
    _spec_table("CPU models", data["cpu_models"], extra="vendor")
    _spec_table("Facilities", data["facilities"])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def modes(as_json: bool) -> None:
    """Virtualization modes and their options (use as MODE or MODE:opt=value,...)."""
    cat = catalog()
    data = [
        {"name": n, "plugin": s.plugin, "description": s.description, "options": s.options}
        for n, s in sorted(cat.modes.items())
    ]
    if as_json:
        out(dumps(data))
        return
    _spec_table("Modes", data)


def _spec_table(title: str, rows: list[dict[str, Any]], extra: str | None = None) -> None:
    from rich.table import Table

    if not rows:
        click.echo(f"{title}: none installed")
        return
    t = Table(title=title, title_justify="left", header_style="bold")
    cols = ["name", *([extra] if extra else []), "plugin", "description", "options"]
    for c in cols:
        t.add_column(c)
    for r in rows:
        opts = "\n".join(f"{k}: {v}" for k, v in sorted(r["options"].items())) or "-"
        t.add_row(*(str(r[c]) if c != "options" else opts for c in cols))
    console().print(t)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of scenario files (for editor completion)."""
    from vpmu_core.scenario.schema import Scenario

    click.echo(dumps(Scenario.model_json_schema(by_alias=True)), nl=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def scenarios(as_json: bool) -> None:
    """Scenarios shipped with vpmu or registered by plugins (use their names with `run`)."""
    from vpmu_core.scenario.loader import available_scenarios, read_data

    rows = []
    for name, path in sorted(available_scenarios(catalog()).items()):
        try:
            desc = str(read_data(Path(path)).get("description", "")).strip().splitlines()[0:1]
        except ConfigError as e:
            desc = [f"(unreadable: {e})"]
        rows.append({"name": name, "path": path, "description": desc[0] if desc else ""})
    if as_json:
        out(dumps(rows))
        return
    from rich.table import Table

    t = Table(title="Scenarios", title_justify="left", header_style="bold")
    t.add_column("name")
    t.add_column("description")
    for r in rows:
        t.add_row(r["name"], r["description"])
    console().print(t)


# ---- running ---------------------------------------------------------------------------------
_scenario_arg = click.argument("scenario", required=False)
_common = [
    click.option("--cpu", "cpu", metavar="MODEL", help="CPU model (overrides the scenario's)."),
    click.option("--mode", "mode", metavar="MODE[:opt=v,...]", help="Mode (overrides the scenario's)."),
    click.option("--facility", "facilities", multiple=True, metavar="F", help="Add a facility (repeatable)."),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a scenario field (dotted path)."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
]


FORMATS = ("table", "json", "csv", "tsv")


def _format_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default=None,
        help="Output format: table (default on stdout), json (default with -o), csv, tsv.",
    )(fn)
    return click.option("--json", "as_json", is_flag=True, help="Same as --format json.")(fn)


def _resolve_format(fmt: str | None, as_json: bool, output: str | None) -> str:
    if as_json and fmt not in (None, "json"):
        fail(f"--json and --format {fmt} contradict each other (allowed: one of them)")
    fmt = fmt or ("json" if as_json or output else "table")
    if output and fmt == "table":
        fail("-o writes json, csv or tsv, not the table (allowed: --format json, csv, tsv)")
    return fmt


def to_delimited(records: list[dict[str, Any]], fmt: str) -> str:
    """CSV (RFC 4180, comma) or TSV text: a header of the union of keys in first-seen order."""
    import csv
    import io

    cols: dict[str, None] = {}
    for r in records:
        cols.update(dict.fromkeys(r))
    buf = io.StringIO()
    w = csv.DictWriter(
        buf, fieldnames=list(cols), delimiter="," if fmt == "csv" else "\t", lineterminator="\n", restval=""
    )
    w.writeheader()
    for r in records:
        w.writerow({k: ("" if v is None else str(v).lower() if isinstance(v, bool) else v) for k, v in r.items()})
    return buf.getvalue()


def _emit(
    fmt: str,
    output: str | None,
    data: Any,
    records: Callable[[], list[dict[str, Any]]],
    table: Callable[[], Any],
) -> None:
    """Print or write (atomically) the command's output in the chosen format."""
    if fmt == "table":
        console().print(table())
        return
    text = dumps(data) if fmt == "json" else to_delimited(records(), fmt)
    if output:
        from vpmu_core.cli.output import write_text

        write_text(output, text)
    else:
        out(text)


def _with_common(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(_common):
        fn = opt(fn)
    return fn


def _load(scenario: str | None, cpu: str | None, mode: str | None, facilities: tuple[str, ...], sets: tuple[str, ...]):
    from vpmu_core.scenario.loader import load

    with input_errors():
        return load(scenario, sets=sets, cpu=cpu, mode=mode, facilities=facilities, catalog=catalog())


_WARNED: set[str] = set()


def warn(message: str) -> None:
    """A warning on stderr, once per message per process."""
    if message not in _WARNED:
        _WARNED.add(message)
        click.echo(f"vpmu: warning: {message}", err=True)


def _execute(scn: Any, source: str, quiet: bool, trace: bool = False, label: str | None = None) -> Any:
    from vpmu_core.scenario.runner import run_scenario

    bar = _Progress(label or scn.name or source, quiet)
    try:
        with input_errors(source):
            res = run_scenario(scn, catalog=catalog(), trace=trace, progress=bar)
    finally:
        bar.close()
    for w in res.warnings:
        warn(w)
    return res


def _check_output(path: str) -> None:
    from vpmu_core.cli.output import check_target

    check_target(path)


@cli.command()
@_scenario_arg
@_with_common
@_format_option
@click.option("-o", "--output", metavar="FILE", help="Write the report (--format, default json) to FILE, not stdout.")
def run(scenario, cpu, mode, facilities, sets, quiet, as_json, fmt, output) -> None:
    """Run SCENARIO (a file or a name; default: the built-in `default`) and report.

    \b
    The event tables, like `perf stat`:
      counted         the count read(2) returns (what the guest or host user believes)
      (running)       time running / time enabled (multiplexing share)
      scaled          counted x enabled / running: perf stat's multiplexing estimate
      truth           what the event should have counted while enabled (ground truth)
      error           scaled vs truth, % (plain multiplexing is not an error)
      raw error       counted vs truth, %
    Hypervisor overhead, per vCPU:
      host cycles     host cycles KVM and perf spent for the vCPU (exits, MSR emulation,
                      perf event create/reprogram, context switches of the PMU)
      cycles/exit     host cycles / VM-exits (all: one-time costs included; steady: without
                      the perf event creations of the first guest perf_event_open)
      cycles/guest s  host cycles per second of guest execution
    --format csv/tsv: one row per perf event (the report's `events`)."""
    fmt = _resolve_format(fmt, as_json, output)
    if output:
        _check_output(output)
    scn, source = _load(scenario, cpu, mode, facilities, sets)
    res = _execute(scn, source, quiet)
    from vpmu_core.metrics.render import event_records, render_report

    _emit(fmt, output, res.report, lambda: event_records(res.report), lambda: render_report(res.report))


def split_modes(text: str) -> list[str]:
    """`emulated,mediated:switch_at=exit,x=1,mediated` -> ['emulated', 'mediated:switch_at=exit,x=1', 'mediated']:
    a comma-separated item with `=` and no `:` continues the previous mode's options."""
    out: list[str] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        if "=" in item and ":" not in item and out:
            out[-1] += "," + item
        else:
            out.append(item)
    return out


@cli.command()
@click.argument("scenario")
@click.option("--modes", "modes_", required=True, metavar="M1,M2[:opt=v],...", help="Modes to compare.")
@click.option("--cpu", "cpu", metavar="MODEL", help="CPU model (overrides the scenario's).")
@click.option("--facility", "facilities", multiple=True, metavar="F", help="Add a facility (repeatable).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a scenario field.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_format_option
@click.option("-o", "--output", metavar="FILE", help="Write the output (--format, default json) to FILE.")
def compare(scenario, modes_, cpu, facilities, sets, quiet, as_json, fmt, output) -> None:
    """Run SCENARIO once per mode (identical workload and seed) and compare side by side.

    \b
    Rows: guest progress (guest instructions retired: overhead eats guest time, so modes
    see different work and exit counts in the same duration), guest mean/max |error|
    (perf-stat scaled value vs truth; raw: the unscaled count), silent errors, host lost
    share (refused host events count as losing all they would have counted), VM-exits,
    host cycles, cycles per exit (all, and steady state without one-time event creation),
    cycles per guest second, leaks, exits by reason, perf API calls.
    --json: {mode label: {composition, summary}}; --format csv/tsv: one row per mode."""
    from vpmu_core.metrics.render import compare_records, mode_label, render_compare

    fmt = _resolve_format(fmt, as_json, output)
    if output:
        _check_output(output)
    specs = list(dict.fromkeys(split_modes(modes_)))  # the same mode twice runs once
    if not specs:
        fail("--modes: no mode given")
    loaded = [(m, *_load(scenario, cpu, m, facilities, sets)) for m in specs]
    results: list[tuple[str, dict[str, Any]]] = []
    for spec, scn, source in loaded:
        res = _execute(scn, source, quiet, label=f"{scenario} [{spec}]")
        results.append((mode_label(res.report["composition"]), res.report))
    if len({label for label, _ in results}) < len(results):  # two specs, one composition
        results = [(spec, r) for spec, (_, r) in zip(specs, results, strict=True)]
    data = {label: {"composition": r["composition"], "summary": r["summary"]} for label, r in results}
    _emit(
        fmt, output, data, lambda: compare_records(results), lambda: render_compare(scenario, results, console().width)
    )


@cli.command()
@click.argument("scenario", required=False)
@click.option("-o", "--output", required=True, metavar="FILE", help="Trace file (.json: Chrome JSON trace).")
@_with_common
def trace(scenario, output, cpu, mode, facilities, sets, quiet) -> None:
    """Write a trace of SCENARIO that Perfetto UI opens: counter ownership per physical
    counter, VM-entries/exits, PMIs, host event states (Chrome JSON trace format)."""
    from vpmu_core.cli.output import atomic_write
    from vpmu_core.metrics.trace import dump_chrome_json

    _check_output(output)
    scn, source = _load(scenario, cpu, mode, facilities, sets)
    res = _execute(scn, source, quiet, trace=True)
    c = res.report["composition"]
    meta = {"scenario": scn.name, "cpu": c["cpu"], "mode": c["mode"], "seed": str(c["seed"])}
    atomic_write(output, lambda f: dump_chrome_json(res.timeline, f, meta))
    if not quiet:
        click.echo(f"wrote {output} ({len(res.timeline.slices)} slices, {len(res.timeline.tracks())} tracks)", err=True)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        fail(f"--size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 1600x900")
    if not (200 <= w <= 10000 and 200 <= h <= 10000):
        fail(f"--size {text!r}: width and height must be 200..10000 pixels")
    return w, h


@cli.command()
@click.argument("scenario", required=False)
@click.option("-o", "--output", required=True, metavar="FILE.png", help="PNG file.")
@click.option("--size", default="1600x900", show_default=True, metavar="WxH", help="Image size in pixels.")
@click.option("--x", "x_key", default=None, metavar="KEY", help="Sweep charts: the grid key on the x axis.")
@_with_common
def plot(scenario, output, size, x_key, cpu, mode, facilities, sets, quiet) -> None:
    """Plot SCENARIO: counter ownership timeline and per-event error bars (PNG).

    \b
    SCENARIO may also be a saved sweep (`vpmu sweep ... --json -o sweep.json`): then the
    chart is cycles per exit, host lost share and guest mean |error| against the swept
    parameter (--x KEY, default the first --grid key that varies), one line per mode."""
    from vpmu_core.cli.output import atomic_write
    from vpmu_core.metrics.plot import plot_run, plot_sweep

    require_extra("plot", "plot")
    w, h = _size(size)
    _check_output(output)
    sweep_rows = _read_sweep(scenario) if scenario and scenario.endswith(".json") else None
    if sweep_rows is not None:
        with input_errors(scenario or ""):
            from vpmu_core.metrics.plot import sweep_axis

            sweep_axis(sweep_rows, x_key)  # a bad --x is a usage error before anything is written
            atomic_write(output, lambda f: plot_sweep(sweep_rows, f, x_key, w, h), binary=True)
        if not quiet:
            click.echo(f"wrote {output} ({w}x{h}, {len(sweep_rows)} sweep points)", err=True)
        return
    scn, source = _load(scenario, cpu, mode, facilities, sets)
    res = _execute(scn, source, quiet, trace=True)
    with input_errors(source):
        atomic_write(output, lambda f: plot_run(res.timeline, res.report, f, w, h), binary=True)
    if not quiet:
        click.echo(f"wrote {output} ({w}x{h})", err=True)


def _read_sweep(path: str) -> list[dict[str, Any]]:
    """A sweep saved with `vpmu sweep --json` (a list of rows with `summary` and `grid`)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        fail(f"{path}: cannot read: {e.strerror or e}")
    except (ValueError, UnicodeDecodeError) as e:
        fail(f"{path}: not a sweep JSON file ({e})")
    if not (isinstance(data, list) and data and all(isinstance(r, dict) and "summary" in r for r in data)):
        fail(f"{path}: not a sweep JSON file (expected the rows `vpmu sweep --json` writes)")
    for r in data:
        r.setdefault("grid", {})
    return data


@cli.command()
@_scenario_arg
@click.option("--cpu", "cpu", metavar="MODEL", help="CPU model (overrides the scenario's).")
@click.option("--mode", "mode", metavar="MODE[:opt=v,...]", help="Mode (overrides the scenario's).")
@click.option("--facility", "facilities", multiple=True, metavar="F", help="Add a facility (repeatable).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a scenario field (dotted path).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of YAML.")
def show(scenario, cpu, mode, facilities, sets, as_json) -> None:
    """Print SCENARIO as it will run: overrides applied and every default filled in
    (exit profile and reason weights, costs, guest PMU, perf session fields). Nothing runs."""
    from vpmu_core.scenario.loader import resolved
    from vpmu_core.scenario.runner import compose_host

    scn, source = _load(scenario, cpu, mode, facilities, sets)
    with input_errors(source):
        host = compose_host(scn, catalog())  # the vendor's cost preset; refuses a bad composition
    data = resolved(scn, host.costs)
    for w in scn.warnings():
        warn(w)
    if as_json:
        out(dumps(data))
        return
    import yaml

    out(f"# {source}, resolved (vpmu show)\n" + yaml.safe_dump(data, sort_keys=False, width=100))


# ---- sweep -----------------------------------------------------------------------------------
SweepPoint = tuple[str, str | None, tuple[str, ...], tuple[str, ...]]


def _grid_value(text: str) -> Any:
    from vpmu_core.scenario.loader import parse_assignment

    try:
        return parse_assignment(text)[1]
    except ConfigError:
        return text


def _sweep_job(job: SweepPoint) -> dict[str, Any]:
    """One sweep point, run in a worker process: (scenario, mode or None, fixed sets, grid
    sets) -> result row. An input error comes back as `{"error": ...}` (with the file name)
    rather than as an exception, so it crosses dask's pickling unchanged."""
    from vpmu_core.scenario.loader import load
    from vpmu_core.scenario.runner import run_scenario

    scenario, mode, fixed, grid = job
    cat = catalog()
    source = scenario
    try:
        scn, source = load(scenario, sets=fixed + grid, mode=mode, catalog=cat)
        res = run_scenario(scn, catalog=cat)
    except ConfigError as e:  # ScenarioError already names its file
        text = str(e)
        return {"error": text if text.startswith(f"{source}:") else f"{source}: {text}"}
    return {
        "scenario": scenario,
        "mode": mode or scn.mode,
        "set": list(fixed + grid),
        "grid": {k: _grid_value(g) for g in grid for k in [g.split("=", 1)[0]]},
        "composition": res.report["composition"],
        "summary": res.report["summary"],
        "warnings": list(res.warnings),
    }


def _sweep_distributed(points: list[Any], scheduler: str | None, workers: int, quiet: bool) -> list[dict[str, Any]]:
    """Run the points on dask.distributed: an existing scheduler or a LocalCluster.

    The local workers start with SIGINT ignored, so a Ctrl-C in the terminal (which the
    whole process group receives) interrupts only this process, which then shuts the
    cluster down quietly (no worker tracebacks)."""
    import logging
    import signal

    from distributed import Client, LocalCluster, as_completed

    from vpmu_core.cli.output import signal_hook

    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    cluster = None
    if scheduler is not None:
        client = Client(scheduler)
    else:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the worker processes
        try:
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.CRITICAL,
            )
            client = Client(cluster)
        finally:
            signal.signal(signal.SIGINT, old)
    try:
        futs = client.map(_sweep_job, points, pure=False)
        show = not quiet and console(stderr=True).is_terminal
        prog: Any = None
        if show:
            from rich.progress import Progress

            prog = Progress(console=console(stderr=True), transient=True)
            prog.start()
        try:
            task = prog.add_task("sweep", total=len(futs)) if prog else None
            for _ in as_completed(futs):
                signal_hook("sweep-point", group=True)
                if prog:
                    prog.advance(task)
        finally:
            if prog:
                prog.stop()
        return list(client.gather(futs))
    except KeyboardInterrupt:
        for f in futs if "futs" in locals() else ():
            f.cancel()
        raise
    finally:
        import contextlib
        import io

        # closing while workers are mid-task logs and warns: keep stderr to the one line
        with contextlib.redirect_stderr(io.StringIO()):
            try:
                client.close(timeout=10)
                if cluster is not None:
                    cluster.close(timeout=10)
            except Exception:  # noqa: BLE001 - shutting down; nothing useful to report
                log.debug("sweep.shutdown_failed", exc_info=True)


def _expand_grid(grid: tuple[str, ...]) -> list[tuple[str, ...]]:
    import itertools

    axes = []
    for g in grid:
        if "=" not in g:
            fail(f"--grid {g!r}: expected key=v1,v2,...")
        k, vals = g.split("=", 1)
        axes.append([f"{k}={v}" for v in vals.split(",") if v != ""] or [f"{k}="])
    return [tuple(c) for c in itertools.product(*axes)] if axes else [()]


@cli.command()
@click.argument("scenarios_", nargs=-1, required=True, metavar="SCENARIO...")
@click.option("--modes", "modes_", default=None, metavar="M1,M2[:opt=v],...", help="Modes (default: each scenario's).")
@click.option("--grid", multiple=True, metavar="KEY=V1,V2,...", help="Sweep a scenario field over values.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Fixed override for every point.")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=None, help="Local workers (default: CPUs).")
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="A running dask.distributed scheduler (tcp://host:8786); default: a local cluster of --jobs workers.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_format_option
@click.option("-o", "--output", metavar="FILE", help="Write the output (--format, default json) to FILE.")
def sweep(scenarios_, modes_, grid, sets, jobs, scheduler, quiet, as_json, fmt, output) -> None:
    """Run SCENARIOs x modes x --grid values in parallel on dask.distributed and tabulate.

    Every point is validated first (nothing runs on bad input). The engine is a local
    dask cluster by default (one single-threaded worker process per job) or an existing
    cluster given with --scheduler; `-j 1` runs in this process. Results come back in
    sweep order, so the output does not depend on which worker finished first.

    \b
    Output: a table, --json (one row per point: scenario, mode, set, grid as key -> value,
    composition, summary), or --format csv/tsv (one row per point, summary keys as
    columns). `vpmu plot SWEEP.json -o chart.png` charts a saved --json sweep."""
    from vpmu_core.scenario.loader import load

    fmt = _resolve_format(fmt, as_json, output)
    if output:
        _check_output(output)
    mode_list: list[str | None] = list(split_modes(modes_)) if modes_ else [None]
    points: list[SweepPoint] = [
        (s, m, tuple(sets), g) for s in scenarios_ for m in mode_list for g in _expand_grid(grid)
    ]
    for s, m, fx, g in points:  # validate every point first: nothing runs on bad input
        with input_errors():
            load(s, sets=fx + g, mode=m, catalog=catalog())
    n = jobs or os.cpu_count() or 1
    in_process = scheduler is None and (n == 1 or len(points) == 1)
    if not in_process:
        require_extra("sweep", "sweep")  # in-process points (-j 1, one point) need no dask
    with input_errors():
        if in_process:
            rows = []
            for p in points:
                rows.append(_sweep_job(p))
                if "error" in rows[-1]:
                    break
        else:
            rows = _sweep_distributed(points, scheduler, min(n, len(points)), quiet)
    for r in rows:
        if "error" in r:
            fail(r["error"])
    kinds: dict[str, list[str]] = {}
    for r in rows:
        for w in r.pop("warnings", []):
            kinds.setdefault(w.split(":", 1)[0], []).append(w)
    for ws in kinds.values():  # one line per kind of warning, however many points had it
        unique = list(dict.fromkeys(ws))
        warn(unique[0] + (f" (and {len(unique) - 1} more like it)" if len(unique) > 1 else ""))
    from vpmu_core.metrics.render import render_sweep, sweep_records

    _emit(fmt, output, rows, lambda: sweep_records(rows), lambda: render_sweep(rows, console().width))


# ---- plugin commands, entry point ------------------------------------------------------------------
def register_plugin_commands(group: click.Group) -> None:
    """Let each loaded plugin add commands (`vpmu_register_commands`); a failure is logged."""
    try:
        cat = catalog()
    except Exception as e:  # discovery never breaks the command
        log.warning("plugins.catalog_failed", error=str(e))
        return
    if cat.pm is None:
        return
    for name, obj in sorted(cat.pm.list_name_plugin(), key=lambda p: str(p[0])):
        fn = getattr(obj, "vpmu_register_commands", None)
        if fn is None:
            continue
        try:
            fn(cli=group)
        except Exception as e:
            log.warning("plugin.commands_failed", plugin=name, error=str(e))


def listing_inputs() -> tuple[bool, list[Any], list[str]]:
    """What the listing cache (vpmu_core/cli/listing_cache.py) is told after `vpmu plugins`:
    whether the discovery was clean (every plugin loaded and registered), the registered
    plugin objects (their packages are part of the stamp) and the scenario files they
    registered."""
    cat = _CATALOG
    if cat is None:
        return False, [], []
    clean = all(p.status == "loaded" for p in cat.plugins)
    plugins = [obj for _, obj in cat.pm.list_name_plugin()] if cat.pm is not None else []
    return clean, plugins, [str(p) for p in cat.scenarios.values()]


def main(argv: list[str] | None = None) -> None:
    configure_logging(0)
    args = sys.argv[1:] if argv is None else argv
    # plugin commands are discovered before click parses -v: keep discovery at warnings,
    # the command's own callback sets the level it was asked for
    register_plugin_commands(cli)
    cli.main(args=args, prog_name="vpmu", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main()
