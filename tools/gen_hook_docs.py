"""Generate docs/plugin-hooks.md from vpmu_core/hookspecs.py (`make docs`).

The hook specs are the documentation of the plugin contract: this script renders each spec's
signature, its `firstresult` marker and its docstring (as written, dedented), the
registration hooks in `REGISTRATION_HOOKS` order, then every other (hypervisor) hook by name.
`--check` exits 1 when the committed file differs from what the specs give (a test runs it).

    python tools/gen_hook_docs.py           # rewrite docs/plugin-hooks.md
    python tools/gen_hook_docs.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "plugin-hooks.md"

HEADER = """\
# Hook reference

Generated from `vpmu_core/hookspecs.py` by `make docs` (tools/gen_hook_docs.py; a test fails
when this file is stale): edit the specs' docstrings, not this file. Implement hooks with
`@vpmu_core.hookimpl`; call conventions: keyword arguments, a subset of the arguments is
allowed, `firstresult` hooks stop at the first non-None answer.
"""


def _specs(module: ModuleType, project: str) -> dict[str, Callable[..., Any]]:
    """Every function of `module` marked with `@hookspec` (pluggy sets `<project>_spec`)."""
    return {
        name: fn
        for name, fn in vars(module).items()
        if inspect.isfunction(fn) and getattr(fn, f"{project}_spec", None) is not None
    }


def _section(name: str, fn: Callable[..., Any], project: str) -> str:
    opts = getattr(fn, f"{project}_spec")
    args = ", ".join(inspect.signature(fn).parameters)
    marks = [m for m in ("firstresult", "historic") if opts.get(m)]
    title = f"### `{name}({args})`" + "".join(f" — `{m}`" for m in marks)
    doc = inspect.cleandoc(fn.__doc__ or "")
    if not doc:
        raise SystemExit(f"gen_hook_docs: hook spec {name} has no docstring")
    return f"{title}\n\n{doc}\n"


def render(module: ModuleType | None = None) -> str:
    """The whole document for the hook specs in `module` (default: vpmu_core.hookspecs)."""
    from vpmu_core import hookspecs
    from vpmu_core.markers import PROJECT

    module = hookspecs if module is None else module
    specs = _specs(module, PROJECT)
    registration = list(module.REGISTRATION_HOOKS)
    unknown = sorted(set(registration) - set(specs))
    if unknown:
        raise SystemExit(f"gen_hook_docs: REGISTRATION_HOOKS names no hook spec: {', '.join(unknown)}")
    hypervisor = sorted(set(specs) - set(registration))
    parts = [HEADER, "## Registration hooks (plugin modules)\n"]
    parts += [_section(n, specs[n], PROJECT) for n in registration]
    parts.append("## Hypervisor hooks (mode and facility objects)\n")
    parts += [_section(n, specs[n], PROJECT) for n in hypervisor]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the file is not current")
    ap.add_argument("--output", type=Path, default=TARGET, help="the file (default: docs/plugin-hooks.md)")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
