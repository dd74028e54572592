"""The `vpmu` command's entry point (the console script `vpmu = vpmu_core.cli.main:main`,
and `python -m vpmu_core.cli.main`). See docs/cli.md.

Kept thin: the click application, every command and its helpers are in
`vpmu_core.cli.app`, imported here only once the command is known to need it. The names
this module used to define (`cli`, `load_catalog`, `dumps`, ...) still resolve here, from
the app (PEP 562).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any


def main(argv: list[str] | None = None) -> None:
    """Run `vpmu` with `argv` (default: the process's arguments); exits like click."""
    args = sys.argv[1:] if argv is None else list(argv)
    from vpmu_core.cli import app

    app.main(args)


def __getattr__(name: str) -> Any:
    """The app's names, as `from vpmu_core.cli.main import cli` found them before app.py."""
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from vpmu_core.cli import app

    return getattr(app, name)


if __name__ == "__main__":  # pragma: no cover
    main()
