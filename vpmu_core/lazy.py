"""Lazy module exports (PEP 562): a package that re-exports names loads each defining module
on first use, so `import vpmu_core` and discovering plugins stay cheap. A leaf module."""

from __future__ import annotations

from importlib import import_module

#: typing.TYPE_CHECKING without importing typing (most of what `import vpmu_core` cost)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def lazy_exports(
    module: str, exports: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of `module`, whose public name -> defining module
    map is `exports`; a name loaded once becomes a plain attribute of `namespace`."""

    def getattr_(name: str) -> Any:
        source = exports.get(name)
        if source is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(import_module(source), name)
        namespace[name] = value  # the next lookup is a plain module attribute
        return value

    def dir_() -> list[str]:
        return sorted([*namespace, *exports])

    return getattr_, dir_
