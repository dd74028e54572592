"""Library logging: key=value messages on the stdlib logger, silent until an application
configures logging (the `vpmu` command does).

A hand-rolled adapter rather than structlog's bound loggers: the engine logs on hot paths,
where a disabled structlog call cost ~7.6 us (the processor chain runs before the level
filter drops it) and importing structlog cost ~0.3 s; here a disabled call is one cached
`isEnabledFor` check and nothing is formatted.
"""

from __future__ import annotations

import logging
from typing import Any

_DEBUG, _INFO, _WARNING, _ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR
# a library stays silent until the application configures logging (no "last resort" output)
logging.getLogger("vpmu").addHandler(logging.NullHandler())


def _render(event: str, fields: dict[str, Any]) -> str:
    """`event='perf.open' cpu=0 eid=3`: the event first, then the fields sorted by name."""
    parts = [f"event={event!r}"]
    parts += [f"{k}={v!r}" for k, v in sorted(fields.items())]
    return " ".join(parts)


class KeyValueLogger:
    """`log.debug("perf.open", eid=3, cpu=0)`; `exc_info=True` passes through."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        exc_info = fields.pop("exc_info", None)
        self._logger.log(level, _render(event, fields), exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(_DEBUG):
            self._log(_DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(_INFO):
            self._log(_INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(_WARNING):
            self._log(_WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(_ERROR):
            self._log(_ERROR, event, fields)

    def is_enabled_for(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)


def get_logger(name: str) -> KeyValueLogger:
    return KeyValueLogger(logging.getLogger(name))
