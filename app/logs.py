"""Logging that shows the library's one line per aborted request in uvicorn's own output.

uvicorn configures only its own loggers; ``request_aborted`` (and the demo's ``app``) would
otherwise fall through to Python's last-resort handler, which drops INFO. So they get a handler
in uvicorn's style, once, however many times the app is built.
"""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]

LOGGERS = ("request_aborted", "app")


def configure_logging(level: str = "INFO") -> None:
    """Send ``request_aborted`` and ``app`` records to stderr, formatted like uvicorn's."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if any(getattr(handler, "_demo", False) for handler in logger.handlers):
            continue
        handler = logging.StreamHandler()
        handler.setFormatter(_formatter())
        handler._demo = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


def _formatter() -> logging.Formatter:
    try:
        from uvicorn.logging import DefaultFormatter
    except ImportError:  # served by something else: plain text will do
        return logging.Formatter("%(levelname)s:     %(name)s: %(message)s")
    return DefaultFormatter("%(levelprefix)s %(name)s: %(message)s", use_colors=None)
