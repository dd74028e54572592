"""docs/plugin-hooks.md is generated from vpmu_core/hookspecs.py (`make docs`,
tools/gen_hook_docs.py) and the committed file is current."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from vpmu_core import hookspecs
from vpmu_core.markers import hookspec

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "gen_hook_docs.py"
DOC = ROOT / "docs" / "plugin-hooks.md"


def _tool() -> Any:
    spec = importlib.util.spec_from_file_location("gen_hook_docs", TOOL)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_hook_reference_is_current() -> None:
    r = subprocess.run([sys.executable, str(TOOL), "--check"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"{r.stderr.strip()} (docs/plugin-hooks.md differs from vpmu_core/hookspecs.py)"
    assert _tool().render() == DOC.read_text(encoding="utf-8")


def test_a_changed_docstring_makes_the_check_fail(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tool = _tool()
    monkeypatch.setattr(hookspecs.vpmu_vm_exit, "__doc__", "Right after a VM-exit (reworded).")
    text = tool.render()
    assert "Right after a VM-exit (reworded)." in text
    assert text != DOC.read_text(encoding="utf-8")
    assert tool.main(["--check"]) == 1
    out = tmp_path / "hooks.md"
    assert tool.main(["--output", str(out)]) == 0  # regenerating makes it current again
    assert tool.main(["--check", "--output", str(out)]) == 0


def test_every_spec_is_rendered_with_signature_marker_and_docstring() -> None:
    """A new spec appears (registration hooks in REGISTRATION_HOOKS order, then the others
    by name), with its argument names, `firstresult` and its dedented docstring."""

    @hookspec(firstresult=True)
    def vpmu_zz_new(vcpu: Any, msr: int) -> int | None:
        """First line.

        :return: second paragraph, indented in the source.
        """

    @hookspec
    def vpmu_register_things(register: Any) -> None:
        """Register things."""

    fake = types.ModuleType("fake_hookspecs")
    vars(fake).update(
        vpmu_zz_new=vpmu_zz_new,
        vpmu_register_things=vpmu_register_things,
        vpmu_vm_exit=hookspecs.vpmu_vm_exit,
        REGISTRATION_HOOKS=("vpmu_register_things",),
    )
    text = _tool().render(fake)
    reg, hyp = text.index("## Registration hooks"), text.index("## Hypervisor hooks")
    assert reg < text.index("### `vpmu_register_things(register)`\n\nRegister things.\n") < hyp
    new = text.index("### `vpmu_zz_new(vcpu, msr)` — `firstresult`\n\nFirst line.\n\n:return: second paragraph")
    assert hyp < text.index("### `vpmu_vm_exit(vcpu, reason, fastpath)`\n") < new
