"""Parsing plugin options: model options (`model_options`) and mode options (`mode_options`).

Options arrive as Python values, from scenario files (YAML/TOML types) and from
``--set key=value`` on the command line (strings), so ``True``, ``"true"``, ``"on"`` and
``1`` must all mean the same. Bad values raise `ConfigError` naming the option, which the
command line reports as a usage error.
"""

from __future__ import annotations

from typing import Any

from vpmu_core.errors import ConfigError

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def parse_bool(name: str, value: Any) -> bool:
    """A boolean option: a bool, or one of true/false, 1/0, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(name, f"expected a boolean, got {value!r}", "true, false (also on/off, yes/no, 1/0)")


def parse_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer option: an int or a decimal/0x-prefixed string, within the bounds given."""
    if isinstance(value, bool):
        raise ConfigError(name, f"expected an integer, got {value!r}")
    try:
        n = value if isinstance(value, int) else int(str(value).strip().replace("_", ""), 0)
    except ValueError:
        raise ConfigError(name, f"expected an integer, got {value!r}") from None
    if (minimum is not None and n < minimum) or (maximum is not None and n > maximum):
        lo = "" if minimum is None else str(minimum)
        hi = "" if maximum is None else str(maximum)
        raise ConfigError(name, f"{n} is out of range", f"{lo}..{hi}")
    return n
