"""The abort line, visible under a plain ``uvicorn app:app`` and never twice.

uvicorn configures its own loggers (``uvicorn``, ``uvicorn.error``, ``uvicorn.access``) and leaves
the root logger alone: with no configuration of the user's, a record of the ``request_aborted``
logger finds no handler, INFO is below the root's WARNING and is dropped, and a WARNING reaches
only ``logging.lastResort``, bare. So the edge decides, for each abort line, where it goes:

* Somebody configured logging for it (a handler on ``request_aborted`` or any ancestor, root
  included: ``basicConfig``, ``dictConfig``, uvicorn's ``--log-config``, pytest's capture): the
  record goes through the logger as usual, and their levels, filters and formats decide.
* Nobody did: the record (INFO and above, unless the ``request_aborted`` logger's own level says
  otherwise, and not when logging is disabled) goes straight to a fallback handler on stderr
  formatted like uvicorn's own lines (``INFO:     request_aborted: GET /x aborted ...``, uvicorn's
  ``DefaultFormatter`` when uvicorn is importable).

The check is made at each abort line, not frozen when the middleware is built: an app object is
usually built before the code that configures logging runs (a ``basicConfig`` after the app, a test
harness adding its handlers per test), and a decision taken early would then print every line
twice. It is one walk up a two-level logger hierarchy, on the abort path only. The fallback handler
belongs to the middleware instance (built once with it), so the module holds no state; the only
global state involved is the logging module's own configuration, which is read, never changed.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Final, TextIO

__all__ = ["AbortLog", "fallback_formatter"]

DEFAULT_LEVEL: Final = logging.INFO  # what uvicorn's own default configuration shows
FORMAT: Final = "%(levelprefix)s %(name)s: %(message)s"  # as the demo's app/logs.py prints it


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time (as ``logging.lastResort`` does)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it
        pass


def fallback_formatter() -> logging.Formatter:
    """uvicorn's ``DefaultFormatter`` (``INFO:     name: message``), or a look-alike without it."""
    try:
        from uvicorn.logging import DefaultFormatter
    except ImportError:
        return _LevelPrefixFormatter()
    formatter: logging.Formatter = DefaultFormatter(FORMAT, use_colors=None)
    return formatter


class _LevelPrefixFormatter(logging.Formatter):
    """``INFO:     name: message``: level name and colon padded to 9 columns, as uvicorn does."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname + ':':<9} {record.name}: {record.getMessage()}"


class AbortLog:
    """Emits the abort line through ``logger``, or through a fallback when nothing handles it."""

    __slots__ = ("_fallback", "logger")

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._fallback = _StderrHandler()
        self._fallback.setFormatter(fallback_formatter())

    def log(self, level: int, msg: str, *args: object, extra: dict[str, Any]) -> None:
        logger = self.logger
        if logger.hasHandlers():
            logger.log(level, msg, *args, extra=extra)
            return
        threshold = logger.level or DEFAULT_LEVEL
        if level < threshold or logger.disabled or logger.manager.disable >= level:
            return
        record = logger.makeRecord(
            logger.name, level, "(request_aborted)", 0, msg, args, None, extra=extra
        )
        if logger.filter(record):
            self._fallback.handle(record)
