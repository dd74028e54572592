"""The `vpmu` command through its real entry point, in subprocesses.

The toy vendor and reference mode (`vpmu_core.testing.toy`) are registered with the
test-only `VPMU_EXTRA_PLUGINS` variable, so these tests do not depend on the real plugins.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TOY_ENV = {"VPMU_EXTRA_PLUGINS": "toy=vpmu_core.testing.toy"}

TOY_SCENARIO = """\
name: toy-contention
description: toy vendor, reference mode, host pinned events mid-run
cpu: toy/basic
mode: reference
cpus: 2
seed: 3
duration_ns: 6_000_000
host:
  tasks:
    - name: stress
      cpu: 1
      work: {instructions: 30_000_000}
  perf:
    - name: nmi_watchdog
      class: cpu_pinned
      cpu: all
      events: [cycles]
    - name: hog
      class: cpu_pinned
      cpu: 0
      events: [instructions, branches, cache-misses]
      start_ns: 2_000_000
      stop_ns: 4_000_000
    - name: prof
      class: task_flexible
      task: vm0/vcpu0
      events: [instructions]
      exclude_guest: true
vms:
  - name: vm0
    vcpus: 1
    pin: [0]
    exits: {rate_per_s: 5000}
    work:
      - work: {instructions: 20_000_000, cycles: 24_000_000, branches: 2_000_000}
    perf:
      - name: stat
        events: [instructions, branches, cycles]
"""


def vpmu_exe() -> list[str]:
    exe = Path(sys.executable).with_name("vpmu")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("vpmu")
    return [found] if found else [sys.executable, "-m", "vpmu_core.cli.main"]


def vpmu(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **TOY_ENV, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [*vpmu_exe(), *args], capture_output=True, text=True, env=full, cwd=cwd, timeout=300, check=False
    )


@pytest.fixture
def scn(tmp_path: Path) -> Path:
    p = tmp_path / "toy.yaml"
    p.write_text(TOY_SCENARIO)
    return p


# ---- discovery commands ------------------------------------------------------------------------
def test_help_lists_every_command() -> None:
    r = vpmu("--help")
    assert r.returncode == 0, r.stderr
    for cmd in ("plugins", "models", "modes", "schema", "run", "compare", "trace", "plot", "sweep", "scenarios"):
        assert cmd in r.stdout


def test_plugins_json_lists_toy_with_hooks() -> None:
    r = vpmu("plugins", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    toy = next(p for p in rows if p["name"] == "toy")
    assert set(toy) == {"name", "dist", "version", "status", "provides", "hooks", "load_error"}
    assert toy["status"] == "loaded"
    assert toy["provides"]["cpu_models"] == ["toy/basic"]
    assert "vpmu_register_modes" in toy["hooks"]


def test_plugins_survives_a_broken_plugin() -> None:
    r = vpmu("plugins", "--json", env={"VPMU_EXTRA_PLUGINS": "toy=vpmu_core.testing.toy,broken=no_such_module_xyz"})
    assert r.returncode == 0, r.stderr
    rows = {p["name"]: p for p in json.loads(r.stdout)}
    assert rows["broken"]["status"] == "failed"
    assert "No module named" in rows["broken"]["load_error"]
    human = vpmu("plugins", env={"VPMU_EXTRA_PLUGINS": "toy=vpmu_core.testing.toy,broken=no_such_module_xyz"})
    assert human.returncode == 0 and "FAILED" in human.stdout


def test_models_and_modes() -> None:
    r = vpmu("models", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert "toy/basic" in [m["name"] for m in data["cpu_models"]]
    assert set(data) == {"cpu_models", "facilities"}
    r = vpmu("modes", "--json")
    assert r.returncode == 0
    assert "reference" in [m["name"] for m in json.loads(r.stdout)]
    assert "toy/basic" in vpmu("models").stdout
    assert "reference" in vpmu("modes").stdout


def test_schema_is_json_schema_with_aliases() -> None:
    r = vpmu("schema")
    assert r.returncode == 0
    s = json.loads(r.stdout)
    assert s["title"] == "Scenario"
    assert {"cpu", "mode", "host", "vms", "costs", "seed", "duration_ns"} <= set(s["properties"])
    assert "class" in s["$defs"]["HostPerfSession"]["properties"]
    assert s["$defs"]["HostTask"]["additionalProperties"] is False


def test_scenarios_lists_default() -> None:
    r = vpmu("scenarios", "--json")
    assert r.returncode == 0
    assert "default" in [x["name"] for x in json.loads(r.stdout)]


# ---- run -------------------------------------------------------------------------------------------
REPORT_KEYS = {
    "composition",
    "duration_ns",
    "events",
    "freq_hz",
    "facilities",
    "guest_counters",
    "guest_faults",
    "host_loss",
    "leaks",
    "mode",
    "open_errors",
    "overhead",
    "perf_api",
    "scenario",
    "schema",
    "silent_error_total_ns",
    "silent_errors",
    "states",
    "summary",
}
EVENT_KEYS = {
    "cpu",
    "error_pct",
    "exclude_guest",
    "exclude_host",
    "id",
    "kind",
    "label",
    "owner",
    "pid",
    "pinned",
    "running_pct",
    "samples",
    "scaled",
    "scaled_error_pct",
    "scope",
    "state",
    "time_enabled_ns",
    "time_running_ns",
    "truth",
    "value",
}
SUMMARY_KEYS = {
    "cycles_per_exit",
    "cycles_per_exit_steady",
    "exits",
    "guest_events",
    "guest_instructions",
    "guest_max_abs_error_pct",
    "guest_max_abs_raw_error_pct",
    "guest_mean_abs_error_pct",
    "guest_mean_abs_raw_error_pct",
    "host_events",
    "host_events_refused",
    "host_refused_pct",
    "host_lost_counts",
    "host_lost_pct",
    "leaks",
    "open_errors",
    "overhead_cycles",
    "overhead_cycles_per_guest_second",
    "perf_api_calls",
    "silent_error_total_ns",
    "silent_errors",
    "steady_exits",
    "steady_from_ns",
    "total_exits",
}


def test_run_json_schema_keys(scn: Path) -> None:
    r = vpmu("run", str(scn), "--json", "-q")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert set(rep) == REPORT_KEYS
    assert rep["schema"] == 1
    assert all(set(e) == EVENT_KEYS for e in rep["events"])
    assert set(rep["summary"]) == SUMMARY_KEYS
    assert rep["scenario"]["name"] == "toy-contention"
    labels = [e["label"] for e in rep["events"]]
    assert "hog/instructions" in labels and "stat/instructions" in labels
    guest = [e for e in rep["events"] if e["scope"] == "guest:vm0"]
    # the reference mode is the ideal vPMU: the guest's instructions match the truth up to the
    # few instructions of the guest perf driver's own MSR accesses
    instr = next(e for e in guest if e["label"] == "stat/instructions")
    assert instr["truth"] > 0 and abs(instr["value"] - instr["truth"]) < 100
    hog = next(e for e in rep["events"] if e["label"] == "hog/instructions")
    assert hog["state"] == "OFF"  # stopped at 4 ms
    # keys sorted at every level
    assert r.stdout == json.dumps(rep, sort_keys=True, indent=2) + "\n"


def test_run_human_output_is_perf_stat_like(scn: Path) -> None:
    r = vpmu("run", str(scn), "-q")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in (
        "Guest perf events",
        "Host perf events",
        "stat/instructions",
        "%)",
        "Silent errors",
        "Hypervisor overhead",
        "VM-exits by reason",
        "Perf API calls",
        "Leak checks",
    ):
        assert needle in out, needle


def test_run_is_deterministic_byte_for_byte(scn: Path) -> None:
    # different hash seeds: no set/dict iteration order may leak into the report
    a = vpmu("run", str(scn), "--json", "-q", env={"PYTHONHASHSEED": "1"})
    b = vpmu("run", str(scn), "--json", "-q", env={"PYTHONHASHSEED": "2"})
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout
    c = vpmu("run", str(scn), "--json", "-q", "--set", "seed=4")
    assert c.returncode == 0 and c.stdout != a.stdout


def test_run_output_file_and_set_override(scn: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = vpmu(
        "run",
        str(scn),
        "-q",
        "-o",
        str(out),
        "--set",
        "vms.vm0.exits.rate_per_s=0",
        "--set",
        "host.perf.hog.start_ns=1000000",
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    exits = rep["overhead"]["vm0/vcpu0"]["exits"]
    assert "io_instruction" not in exits  # no background exits left
    hog = next(e for e in rep["events"] if e["label"] == "hog/instructions")
    assert hog["time_enabled_ns"] >= 2_900_000


def test_run_toml_scenario(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text(
        textwrap.dedent("""\
        name = "toml"
        cpu = "toy/basic"
        mode = "reference"
        duration_ns = 2000000
        [[vms]]
        name = "g"
        [[vms.work]]
        work = { instructions = 1000000 }
        [[vms.perf]]
        name = "s"
        events = ["instructions"]
        """)
    )
    r = vpmu("run", str(p), "--json", "-q")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)["events"][0]
    # truth also holds the few instructions the guest perf driver itself retires (its MSR writes)
    assert 1_000_000 <= ev["truth"] < 1_000_100 and abs(ev["value"] - ev["truth"]) < 100


def test_run_cpu_and_mode_overrides_on_default() -> None:
    r = vpmu("run", "--cpu", "toy/basic", "--mode", "reference", "--json", "-q", "--set", "duration_ns=3000000")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["composition"]["cpu"] == "toy/basic"
    assert rep["scenario"]["name"] == "default"


# ---- error paths: exit 2, one message, nothing written -----------------------------------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "/nonexistent/x.yaml"], "no such scenario file"),
        (["run", "no-such-scenario-name"], "allowed: "),
        (["run", "{scn}", "--cpu", "nope/cpu"], "unknown CPU model 'nope/cpu' (allowed: "),
        (["run", "{scn}", "--mode", "nomode"], "unknown mode 'nomode' (allowed: "),
        (["run", "{scn}", "--mode", "reference:foo=1"], "unknown option(s) ['foo']"),
        (["run", "{scn}", "--facility", "nofac"], "unknown facility 'nofac'"),
        (["run", "{scn}", "--set", "seed=notanint"], "seed: "),
        (["run", "{scn}", "--set", "model_options.gp_counters=abc"], "gp_counters"),
        (["run", "{scn}", "--set", "host.perf.hog.class=cpu_pined"], "'cpu_pinned'"),
        (["run", "{scn}", "--set", "vms.vm0.pmu.gp_countrs=2"], "vms[0].pmu.gp_countrs: unknown field (allowed: "),
        (["run", "{scn}", "--set", "vms.nosuchvm.vcpus=2"], "no item named 'nosuchvm'"),
        (["compare", "{scn}", "--modes", "reference,nomode"], "unknown mode 'nomode'"),
    ],
)
def test_input_errors_exit_2_and_write_nothing(scn: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "out.json"
    argv = [a.replace("{scn}", str(scn)) for a in args]
    if argv[0] == "run":
        argv += ["-o", str(out)]
    r = vpmu(*argv)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr  # one message
    assert r.stdout == ""
    assert not out.exists()


def test_unknown_field_names_file_path_and_allowed(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(TOY_SCENARIO.replace("    pin: [0]\n", "    pin: [0]\n    vcpu_count: 2\n"))
    out = tmp_path / "trace.json"
    r = vpmu("trace", str(p), "-o", str(out))
    assert r.returncode == 2
    assert str(p) in r.stderr
    assert "vms[0].vcpu_count: unknown field (allowed: " in r.stderr and "vcpus" in r.stderr
    assert not out.exists()


def test_bad_yaml_and_bad_event(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("cpu: [unclosed\n")
    r = vpmu("run", str(p))
    assert r.returncode == 2 and "not valid YAML" in r.stderr
    p.write_text(TOY_SCENARIO.replace("[instructions, branches, cycles]", "[instructions, brnches]"))
    r = vpmu("run", str(p))
    assert r.returncode == 2 and "unknown event 'brnches'" in r.stderr and "branch-misses" in r.stderr


def test_plot_bad_size_is_usage_error(scn: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.png"
    r = vpmu("plot", str(scn), "-o", str(out), "--size", "huge")
    assert r.returncode == 2 and not out.exists()


def test_click_usage_error_exit_2() -> None:
    assert vpmu("run", "--no-such-option").returncode == 2
    assert vpmu("compare").returncode == 2


# ---- compare, trace, plot, sweep ---------------------------------------------------------------
def test_compare_side_by_side(scn: Path) -> None:
    r = vpmu("compare", str(scn), "--modes", "reference,reference", "--json", "-q")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert list(data) == ["reference"] or len(data) == 1  # same label twice collapses
    r = vpmu("compare", str(scn), "--modes", "reference", "-q")
    assert r.returncode == 0, r.stderr
    for needle in (
        "guest mean |error|",
        "silent errors",
        "host lost",
        "cycles per exit",
        "exits:",
        "perf API calls",
        "leaks",
    ):
        assert needle in r.stdout, needle


def test_trace_is_valid_chrome_json_with_tracks(scn: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    r = vpmu("trace", str(scn), "-o", str(out), "-q")
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    evs = data["traceEvents"]
    threads = {e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
    procs = {e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "process_name"}
    assert {"host/cpu0/gp0", "host/cpu1/gp0", "vm0/vcpu0", "guest:vm0/vcpu0/gp0"} <= threads
    assert any(t.startswith("event ") and "hog/instructions" in t for t in threads)
    assert any(p.startswith("host PMU") for p in procs) and any(p.startswith("vCPUs") for p in procs)
    slices = [e for e in evs if e["ph"] == "X"]
    assert slices and all(e["dur"] >= 0 and e["ts"] >= 0 for e in slices)
    names = {e["name"] for e in slices}
    assert "guest" in names and any(n.startswith("exit:") for n in names)
    assert any(n.startswith("user:hog/") for n in names)  # the host event owning a counter
    # deterministic bytes
    out2 = tmp_path / "run2.json"
    assert vpmu("trace", str(scn), "-o", str(out2), "-q").returncode == 0
    assert out.read_bytes() == out2.read_bytes()


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_png_of_requested_size(scn: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.png"
    r = vpmu("plot", str(scn), "-o", str(out), "--size", "1000x600", "-q")
    assert r.returncode == 0, r.stderr
    assert _png_size(out) == (1000, 600)


def test_sweep_parallel_grid(scn: Path) -> None:
    r = vpmu(
        "sweep", str(scn), "--grid", "seed=1,2", "--grid", "vms.vm0.exits.rate_per_s=0,20000", "-j", "2", "--json", "-q"
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["set"] for row in rows] == [
        ["seed=1", "vms.vm0.exits.rate_per_s=0"],
        ["seed=1", "vms.vm0.exits.rate_per_s=20000"],
        ["seed=2", "vms.vm0.exits.rate_per_s=0"],
        ["seed=2", "vms.vm0.exits.rate_per_s=20000"],
    ]
    assert rows[1]["summary"]["total_exits"] > rows[0]["summary"]["total_exits"]
    seq = vpmu(
        "sweep", str(scn), "--grid", "seed=1,2", "--grid", "vms.vm0.exits.rate_per_s=0,20000", "-j", "1", "--json", "-q"
    )
    assert seq.stdout == r.stdout  # parallel == sequential
    assert vpmu("sweep", str(scn), "--grid", "seed=x").returncode == 2
    human = vpmu("sweep", str(scn), "-q")
    assert human.returncode == 0 and "sweep: 1 point" in human.stdout


def test_plugin_commands_hook(tmp_path: Path) -> None:
    mod = tmp_path / "vpmu_cmdplug.py"
    mod.write_text(
        textwrap.dedent("""\
        import click
        from vpmu_core import hookimpl

        @hookimpl
        def vpmu_register_commands(cli):
            @cli.command(name="hello-plugin")
            def hello():
                click.echo("hello from a plugin")
        """)
    )
    env = {"VPMU_EXTRA_PLUGINS": "toy=vpmu_core.testing.toy,cmdplug=vpmu_cmdplug", "PYTHONPATH": str(tmp_path)}
    r = vpmu("hello-plugin", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello from a plugin\n"


def test_structlog_warnings_go_to_stderr_not_stdout() -> None:
    env = {"VPMU_EXTRA_PLUGINS": "toy=vpmu_core.testing.toy,nohooks=json"}
    r = vpmu("plugins", "--json", env=env)
    assert r.returncode == 0
    json.loads(r.stdout)  # stdout stays machine-readable
    assert "plugin.rejected" in r.stderr


def _installed(kind: str, name: str) -> bool:
    from vpmu_core import catalog

    cat = catalog()
    return name in (cat.cpu_models if kind == "cpu" else cat.modes)


@pytest.mark.skipif(
    not (_installed("cpu", "intel/icelake") and _installed("mode", "emulated")),
    reason="needs the intel_arch and mode_emulated plugins installed",
)
def test_default_scenario_on_real_plugins_shows_a_silent_error() -> None:
    env = {"VPMU_EXTRA_PLUGINS": ""}
    a = vpmu("run", "--json", "-q", env=env)
    assert a.returncode == 0, a.stderr
    rep = json.loads(a.stdout)
    assert rep["composition"]["cpu"] == "intel/icelake" and rep["composition"]["mode"] == "emulated"
    assert rep["summary"]["silent_errors"] > 0
    assert rep["summary"]["guest_max_abs_error_pct"] > 1.0
    b = vpmu("run", "--json", "-q", env=env)
    assert a.stdout == b.stdout
    human = vpmu("run", env=env)
    assert human.returncode == 0 and "Silent errors (" in human.stdout
