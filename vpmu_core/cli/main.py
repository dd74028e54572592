"""The `vpmu` command's entry point (the console script `vpmu = vpmu_core.cli.main:main`,
and `python -m vpmu_core.cli.main`). See docs/cli.md.

Kept thin: `vpmu plugins` and `vpmu plugins --json` are first looked up in the listing
cache (`vpmu_core.cli.listing_cache`, standard library only), and only a miss imports the
click application (`vpmu_core.cli.app`: every command and its helpers), whose answer is then
recorded for the next time. The names this module used to define (`cli`, `load_catalog`,
`dumps`, ...) still resolve here, from the app (PEP 562).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any


def main(argv: list[str] | None = None) -> None:
    """Run `vpmu` with `argv` (default: the process's arguments); exits like click."""
    args = sys.argv[1:] if argv is None else list(argv)
    from vpmu_core.cli import listing_cache

    run = listing_cache.begin(args)
    if run is not None and run.serve():
        sys.exit(0)
    from vpmu_core.cli import app

    if run is None:
        app.main(args)
        return
    code: object = 1  # anything but a clean exit stores nothing
    try:
        with run.record():
            app.main(args)
        code = 0
    except SystemExit as e:
        code = e.code
        raise
    finally:
        if code in (0, None):
            try:
                clean, plugins, files = app.listing_inputs()
            except Exception:  # the cache never breaks the command
                clean, plugins, files = False, [], []
            run.store(clean, plugins, files)


def __getattr__(name: str) -> Any:
    """The app's names, as `from vpmu_core.cli.main import cli` found them before app.py."""
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from vpmu_core.cli import app

    return getattr(app, name)


if __name__ == "__main__":  # pragma: no cover
    main()
