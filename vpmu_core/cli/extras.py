"""Optional dependencies of single commands, installed as extras of the `vpmu` distribution.

`vpmu plot` draws with matplotlib (`vpmu[plot]`) and `vpmu sweep` runs its points on
dask.distributed (`vpmu[sweep]`); nothing else imports them, so a plain `pip install vpmu`
leaves them out. A command that needs one checks it before it does any work
(`vpmu_core.cli.app.require_extra`): when the module cannot be imported it prints one line
naming the extra and exits 2 (an environment the command cannot run in, like an unknown
mode: nothing ran, nothing was written).
"""

from __future__ import annotations

import importlib

#: extra -> (the module the command imports, the distribution that provides it)
EXTRAS: dict[str, tuple[str, str]] = {
    "plot": ("matplotlib", "matplotlib"),
    "sweep": ("distributed", "dask.distributed"),
}


def missing_extra_message(extra: str, command: str) -> str | None:
    """None when the extra's module imports, else the one-line reason naming the extra."""
    module, dist = EXTRAS[extra]
    try:
        importlib.import_module(module)
    except ImportError as e:
        absent = isinstance(e, ModuleNotFoundError) and e.name == module
        why = "which is not installed" if absent else f"which cannot be imported ({e})"
        return f"`vpmu {command}` needs {dist}, {why}: install the {extra} extra, pip install 'vpmu[{extra}]'"
    return None
