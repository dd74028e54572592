"""Issue 15 (never hang, crash or leave half a file; what a platform engineer needs) and the
headline numbers of issue 17 §3, through the real command in subprocesses (toy plugins
unless a test needs a real mode) and the library where a unit is enough.

Interruptions are deterministic: `VPMU_TEST_SIGNAL_AT` (vpmu_core/cli/output.py) raises
SIGINT at a named point (mid-run, mid-write, after a sweep point), no sleeps."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.test_cli import TOY_ENV, TOY_SCENARIO, vpmu, vpmu_exe


@pytest.fixture
def scn(tmp_path: Path) -> Path:
    p = tmp_path / "toy.yaml"
    p.write_text(TOY_SCENARIO)
    return p


def _one_line_error(r: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout[-500:], r.stderr)
    assert needle in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr


# ---- bounds and refusals: exit 2, the field, nothing written ------------------------------------
@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["model_options.freq_hz=-3"], "model_options.freq_hz: -3 is not a clock in Hz (allowed: integers"),
        (["model_options.freq_hz=0"], "model_options.freq_hz: 0 is not a clock"),
        (["vms.vm0.vcpus=1000000"], "vms[0].vcpus: Input should be less than or equal to 1024"),
        (
            ["vms.vm0.exits.reasons={teleport: 1}"],
            "vms[0].exits.reasons: unknown exit reason(s) ['teleport'] (allowed: ",
        ),
        (["vms.vm0.exits.reasons={hlt: -1}"], "vms[0].exits.reasons.hlt"),
        (["costs.vmexit_full_simple=-5"], "costs.vmexit_full_simple: Input should be greater than or equal to 0"),
        (["vms.vm0.pmu.lbr=true"], "vms[0].pmu.lbr: true needs an LBR facility"),
        (["vms.vm0.perf=[{name: a, events: [cycles]}, {name: a, events: [instructions]}]"], "duplicate session names"),
        (["host.perf.prof.name=hog"], "host.perf: duplicate session names ['hog']"),
    ],
)
def test_out_of_bounds_and_silently_accepted_inputs_are_refused(
    scn: Path, tmp_path: Path, sets: list[str], needle: str
) -> None:
    out = tmp_path / "out.json"
    args = ["run", str(scn), "-q", "-o", str(out)]
    for s in sets:
        args += ["--set", s]
    r = vpmu(*args)
    _one_line_error(r, 2, needle)
    assert str(scn) in r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [scn]


def test_binary_garbage_directory_and_device_as_scenario(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(256)) * 8)
    _one_line_error(vpmu("run", str(garbage)), 2, "not a text file")
    _one_line_error(vpmu("run", str(tmp_path)), 2, "is a directory, not a scenario file")
    _one_line_error(vpmu("run", "/dev/null"), 2, "is not a regular file")


def test_empty_mode_and_cpu_are_refused(scn: Path) -> None:
    _one_line_error(vpmu("run", str(scn), "--mode", ""), 2, "--mode: empty mode '' (allowed: ")
    _one_line_error(vpmu("run", str(scn), "--cpu", ""), 2, "--cpu: empty CPU model (allowed: ")


def test_clamps_and_late_actions_warn_once_on_stderr(scn: Path) -> None:
    r = vpmu(
        "run", str(scn), "-q", "--json",
        "--set", "vms.vm0.pmu.gp_counters=99", "--set", "vms.vm0.pmu.version=9",
        "--set", "vms.vm0.perf.stat.start_ns=50000000",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)  # stdout stays clean
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("vpmu: warning: ")]
    assert any("vms[0].pmu.gp_counters: 99" in w and "clamped to 4" in w for w in warnings), r.stderr
    assert any("vms[0].pmu.version: 9" in w and "clamped to 2" in w for w in warnings), r.stderr
    assert any("vms[0].perf[0].start_ns" in w and "after the run ends" in w for w in warnings), r.stderr
    assert len(warnings) == len(set(warnings))


def test_sweep_names_the_file_of_a_bad_point(scn: Path) -> None:
    r = vpmu("sweep", str(scn), "--modes", "nomode", "-q")
    _one_line_error(r, 2, "unknown mode 'nomode'")
    assert str(scn) in r.stderr


def test_mediated_lbr_refusal_names_the_vm(tmp_path: Path) -> None:
    r = vpmu("run", "default", "--mode", "mediated", "--facility", "lbr", "--set", "vms.vm0.pmu.lbr=true", env={})
    _one_line_error(r, 2, "vms[0].pmu.lbr: mode 'mediated' gives guests no LBR (allowed: false)")


def test_errno_95_is_eopnotsupp_and_allowed_values_spelled_one_way() -> None:
    from vpmu_core.errors import ConfigError, PerfError

    assert "EOPNOTSUPP" in str(PerfError(95, "x")) and "ENOTSUP:" not in str(PerfError(95, "x"))
    assert str(ConfigError("f", "m", "(none)")) == "f: m (allowed: none)"
    assert str(ConfigError("f", "m", [])) == "f: m (allowed: none)"
    assert str(ConfigError("f", "m", False)) == "f: m (allowed: false)"


# ---- I/O errors: one line, exit 1 (I/O) or 2 (usage), no traceback --------------------------------
def test_output_to_a_directory_is_a_usage_error(scn: Path, tmp_path: Path) -> None:
    for cmd in ("run", "trace", "plot", "compare", "sweep"):
        args = [cmd, str(scn), "-q", "-o", str(tmp_path)] + (["--modes", "reference"] if cmd == "compare" else [])
        _one_line_error(vpmu(*args), 2, "is a directory")


def test_unwritable_directory_is_a_usage_error(scn: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = "/proc/sys/vpmu-out.json"  # root may write anywhere else
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        target = str(ro / "out.json")
    r = vpmu("run", str(scn), "-q", "-o", target)
    assert r.returncode in (1, 2) and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_device_is_one_line_exit_1(scn: Path) -> None:
    for cmd in ("run", "trace", "plot"):
        _one_line_error(vpmu(cmd, str(scn), "-q", "-o", "/dev/full"), 1, "No space left on device")
    with open("/dev/full", "w") as full:
        r = subprocess.run(
            [*vpmu_exe(), "run", str(scn), "-q", "--json"],
            stdout=full, stderr=subprocess.PIPE, text=True, env={**os.environ, **TOY_ENV}, check=False,
        )  # fmt: skip
    _one_line_error(r, 1, "vpmu: I/O error: stdout: No space left on device")


def test_closed_pipe_is_one_line_exit_1(scn: Path) -> None:
    p = subprocess.Popen(
        [*vpmu_exe(), "run", str(scn), "-q", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **TOY_ENV},
    )  # fmt: skip
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # the reader is gone before the report is written
    err = p.stderr.read()
    assert p.wait() == 1 and err == "vpmu: I/O error: stdout: closed pipe\n", err


# ---- atomic outputs and SIGINT ----------------------------------------------------------------------
def test_atomic_write_interrupted_mid_write_leaves_no_partial_file(tmp_path: Path) -> None:
    from vpmu_core.cli.output import atomic_write

    target = tmp_path / "out.json"

    def half_then_interrupt(f: io.TextIOBase) -> None:
        f.write('{"half": ')
        f.flush()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(target), half_then_interrupt)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary file
    target.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(target), half_then_interrupt)
    assert target.read_text() == "old\n" and list(tmp_path.iterdir()) == [target]
    atomic_write(str(target), lambda f: f.write("new\n"))
    assert target.read_text() == "new\n" and list(tmp_path.iterdir()) == [target]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


@pytest.mark.parametrize("cmd", ["trace", "run", "plot"])
def test_sigint_mid_write_exits_130_and_leaves_nothing(scn: Path, tmp_path: Path, cmd: str) -> None:
    out = tmp_path / ("t.png" if cmd == "plot" else "t.json")
    r = vpmu(cmd, str(scn), "-q", "-o", str(out), env={"VPMU_TEST_SIGNAL_AT": "write"})
    assert r.returncode == 130, r.stderr
    assert r.stderr == "vpmu: interrupted\n"
    assert list(tmp_path.iterdir()) == [scn]


def test_sigint_mid_run_exits_130_one_line(scn: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = vpmu("run", str(scn), "-o", str(out), env={"VPMU_TEST_SIGNAL_AT": "progress"})
    assert (r.returncode, r.stderr, r.stdout) == (130, "vpmu: interrupted\n", "")
    assert not out.exists()


def test_sigint_during_parallel_sweep_shuts_the_cluster_down_quietly(scn: Path) -> None:
    # a terminal's Ctrl-C signals the whole process group: the hook does the same, so the
    # command runs in a session of its own
    r = subprocess.run(
        [*vpmu_exe(), "sweep", str(scn), "--grid", "seed=1,2,3,4", "-j", "2", "-q", "--json"],
        capture_output=True, text=True, env={**os.environ, **TOY_ENV, "VPMU_TEST_SIGNAL_AT": "sweep-point"},
        start_new_session=True, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 130, r.stderr
    assert r.stderr == "vpmu: interrupted\n", r.stderr
    assert r.stdout == ""


# ---- formats, -o, sweep grid ------------------------------------------------------------------------
def test_csv_and_tsv_exports(scn: Path, tmp_path: Path) -> None:
    r = vpmu("run", str(scn), "-q", "--format", "csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    rep = json.loads(vpmu("run", str(scn), "-q", "--json").stdout)
    assert len(rows) == len(rep["events"])
    assert [int(x["truth"]) for x in rows] == [e["truth"] for e in rep["events"]]
    assert {"scaled_error_pct", "error_pct", "where"} <= set(rows[0])
    out = tmp_path / "cmp.tsv"
    r = vpmu("compare", str(scn), "--modes", "reference", "-q", "--format", "tsv", "-o", str(out))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text()), delimiter="\t"))
    assert [x["mode"] for x in rows] == ["reference"] and "guest_instructions" in rows[0]
    out = tmp_path / "sweep.csv"
    r = vpmu("sweep", str(scn), "--grid", "seed=1,2", "-j", "1", "-q", "--format", "csv", "-o", str(out))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [x["grid.seed"] for x in rows] == ["1", "2"] and "cycles_per_exit_steady" in rows[0]
    _one_line_error(vpmu("run", str(scn), "--json", "--format", "csv"), 2, "contradict")


def test_sweep_json_grid_is_a_typed_mapping_and_plots(scn: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    r = vpmu(
        "sweep", str(scn), "--modes", "reference", "--grid", "vms.vm0.exits.rate_per_s=0,5000,20000",
        "--set", "duration_ns=3000000", "-j", "1", "-q", "-o", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [row["grid"] for row in rows] == [{"vms.vm0.exits.rate_per_s": v} for v in (0, 5000, 20000)]
    png = tmp_path / "sweep.png"
    r = vpmu("plot", str(out), "-o", str(png), "--size", "900x500", "-q")
    assert r.returncode == 0, r.stderr
    from tests.test_cli import _png_size

    assert _png_size(png) == (900, 500)
    _one_line_error(vpmu("plot", str(out), "-o", str(png), "--x", "nokey"), 2, "--x: 'nokey' is not a grid key")


# ---- narrow terminals --------------------------------------------------------------------------------
def _numbers(text: str) -> set[str]:
    return set(re.findall(r"\d[\d,]*", text))


def test_narrow_terminal_never_cuts_a_number(scn: Path) -> None:
    rep = json.loads(vpmu("run", str(scn), "-q", "--json").stdout)
    r = vpmu("run", str(scn), "-q", env={"COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    assert max(len(line) for line in r.stdout.splitlines()) <= 100
    shown = _numbers(r.stdout)
    for e in rep["events"]:
        for key in ("value", "scaled", "truth"):
            assert f"{e[key]:,}" in shown, (key, e[key])
    assert "…" not in r.stdout
    assert "2 CPUs" in r.stdout
    r1 = vpmu(
        "run", str(scn), "-q", "--set", "cpus=1", "--set", "host.tasks.stress.cpu=0", "--set", "host.perf.hog.cpu=0"
    )
    assert "1 CPU," in r1.stdout, r1.stderr


def test_narrow_compare_keeps_mode_labels_distinct_and_yaml_booleans() -> None:
    modes = (
        "emulated,mediated:switch_at=run_loop,mediated:switch_at=exit,mediated:switch_at=vcpu_run,elide_writes=false"
    )
    r = vpmu("compare", "default", "--modes", modes, "-q", "--set", "duration_ns=2000000", env={"COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    assert max(len(line) for line in r.stdout.splitlines()) <= 100
    assert "…" not in r.stdout and "False" not in r.stdout and "elide_writes=false" in r.stdout
    for place in ("run_loop", "=exit", "vcpu_run"):
        assert place in r.stdout
    assert "guest progress (instructions)" in r.stdout and "cycles per exit (steady)" in r.stdout
    data = json.loads(
        vpmu("compare", "default", "--modes", modes, "-q", "--json", "--set", "duration_ns=2000000").stdout
    )
    assert len(data) == 4


def test_narrow_sweep_is_readable(scn: Path) -> None:
    r = vpmu(
        "sweep", str(scn), "--grid", "seed=1,2", "--grid", "vms.vm0.exits.rate_per_s=0,20000", "-j", "1", "-q",
        env={"COLUMNS": "100"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert max(len(line) for line in r.stdout.splitlines()) <= 100 and "…" not in r.stdout
    assert "rate_per_s=20000" in r.stdout and "4 points" in r.stdout


# ---- show ------------------------------------------------------------------------------------------------
def test_show_prints_the_resolved_scenario_with_defaults(scn: Path) -> None:
    r = vpmu("show", str(scn), "--json", "--set", "vms.vm0.exits.rate_per_s=7")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    exits = data["vms"][0]["exits"]
    assert exits["rate_per_s"] == 7 and exits["fastpath_share"] == 0.3 and "external_interrupt" in exits["reasons"]
    assert data["costs"]["vmexit_full_simple"] == 1200 and data["host"]["perf"][0]["class"] == "cpu_pinned"
    r = vpmu("show", str(scn))
    assert r.returncode == 0 and "reasons:" in r.stdout and "vmexit_fastpath: 600" in r.stdout
    _one_line_error(vpmu("show", str(scn), "--mode", "nomode"), 2, "unknown mode 'nomode'")


# ---- headline numbers (issue 17 §3) -------------------------------------------------------------------
def _report(**summary_inputs: object) -> dict:
    base = {
        "events": [],
        "host_loss": [],
        "overhead": {"host": {}},
        "perf_api": {},
        "silent_errors": [],
        "silent_error_total_ns": 0,
        "leaks": {"leaks": []},
        "open_errors": [],
        "freq_hz": 1,
    }
    return {**base, **summary_inputs}


def test_refused_host_events_are_not_a_zero_loss() -> None:
    from vpmu_core.metrics.render import compare_rows
    from vpmu_core.scenario.runner import summarize

    refused = [{"scope": "host", "session": "s", "event": "cycles", "where": "cpu0", "error": "EOPNOTSUPP"}] * 3
    rep = _report(open_errors=refused)
    sm = summarize(rep)
    assert (sm["host_events"], sm["host_events_refused"], sm["host_refused_pct"]) == (0, 3, 100.0)
    rep["summary"], rep["composition"] = sm, {"cpu": "x", "mode": "m", "cpus": 1, "seed": 0}
    rows = dict(compare_rows([("m", rep)]))
    assert rows["host lost share"] == ["n/a: all refused"] and rows["host events refused"] == ["3 of 3"]


def test_guest_error_uses_the_scaled_value_and_keeps_the_raw() -> None:
    from vpmu_core.scenario.runner import summarize

    ev = {"scope": "guest:vm0", "error_pct": -50.0, "scaled_error_pct": 0.5}
    sm = summarize(_report(events=[ev]))
    assert sm["guest_mean_abs_error_pct"] == 0.5 and sm["guest_mean_abs_raw_error_pct"] == 50.0


def test_steady_cycles_per_exit_leaves_out_one_time_costs() -> None:
    r = vpmu("run", "cloud_mix", "-q", "--json", env={})
    sm = json.loads(r.stdout)["summary"]
    # KVM's perf event creation (30,000 cycles each) happens when the guests enable their counters
    assert sm["steady_from_ns"] > 0 and 0 < sm["cycles_per_exit_steady"] < sm["cycles_per_exit"]
    assert "cycles per exit has not settled" in r.stderr


def test_zero_length_silent_errors_are_dropped() -> None:
    # emulated-gap-3.2-case1 opens and closes a silent interval at the same 12 ms instant
    r = vpmu("run", "emulated-gap-3.2-case1", "-q", "--json", env={})
    rep = json.loads(r.stdout)
    assert rep["silent_errors"] and all(s["duration_ns"] > 0 for s in rep["silent_errors"])
    assert rep["summary"]["silent_errors"] == len(rep["silent_errors"])


# ---- trace and plot content ---------------------------------------------------------------------------
def _trace(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "t.json"
    r = vpmu("trace", *args, "-o", str(out), "-q", env={})
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text())


def test_trace_shows_mediated_guest_ownership_counter_values_tasks_and_nests(tmp_path: Path) -> None:
    data = _trace(tmp_path, "default", "--mode", "mediated:switch_at=run_loop")
    evs = data["traceEvents"]
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
    # the physical counters carry the guest while its context is loaded
    owned = [
        e
        for e in evs
        if e["ph"] == "X" and threads[(e["pid"], e["tid"])].startswith("host/cpu0/") and e["name"] == "guest:vm0/vcpu0"
    ]
    assert owned and all(e["args"]["owner"] == "guest" for e in owned)
    assert any(e["ph"] == "C" and e["name"].startswith("vm0/vcpu0 ") for e in evs)  # counter values
    assert {"host/cpu0/task", "host/cpu1/task"} <= set(threads.values())
    assert any(
        e["ph"] == "X" and threads[(e["pid"], e["tid"])] == "host/cpu0/task" and e["name"] == "vm0/vcpu0" for e in evs
    )
    # slices on one track never overlap, and none ends after the run
    end = max(e["ts"] + e["dur"] for e in evs if e["ph"] == "X")
    by_track: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in evs:
        if e["ph"] == "X":
            by_track.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_track.values():
        spans.sort()
        assert all(b[0] >= a[1] - 1e-6 for a, b in zip(spans, spans[1:], strict=False))
    assert end <= 20_001 + 20  # the 20 ms run plus the last step's exit


def test_trace_end_of_run_reads_do_not_overlap(tmp_path: Path) -> None:
    # cloud_mix under emulated: the report's final reads used to add exit slices after the run end
    data = _trace(tmp_path, "cloud_mix")
    spans: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in data["traceEvents"]:
        if e["ph"] == "X":
            spans.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for s in spans.values():
        s.sort()
        assert all(b[0] >= a[1] - 1e-6 for a, b in zip(s, s[1:], strict=False))


def test_tracing_does_not_change_what_the_tracer_adds_to(tmp_path: Path) -> None:
    """The counter-value samples and task hooks observe only: the traced report is the same
    with them switched off."""
    from vpmu_core.cli.app import dumps, load_catalog
    from vpmu_core.metrics import timeline as T
    from vpmu_core.scenario.loader import load
    from vpmu_core.scenario.runner import run_scenario

    cat = load_catalog()
    scn, _ = load("cloud_mix", mode="mediated:switch_at=exit", catalog=cat)
    full = dumps(run_scenario(scn, catalog=cat, trace=True).report)
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(T.Timeline, "_sample_values", lambda self, v, t: None)
        mp.setattr(T.Timeline, "_hook_task_switches", lambda self: None)
        bare = dumps(run_scenario(scn, catalog=cat, trace=True).report)
    finally:
        mp.undo()
    assert full == bare


def test_plot_title_has_mode_options_and_seed() -> None:
    from vpmu_core.metrics.plot import _title

    rep = {"composition": {"cpu": "c", "mode": "mediated", "mode_options": {"elide_writes": False}, "seed": 7}}
    assert _title(rep) == "run: c, mode mediated:elide_writes=false, seed 7 - counter ownership"
