"""Listening to the app's own engine for as long as the app runs, and not a moment longer.

The demo's instruments (the live panel, ``DEMO_DEBUG``'s record) time statements with
SQLAlchemy's engine events. They listen on the one engine the lifespan created, never on the
``Engine`` class, which would reach every engine in the process (another app's, a test's) and
stay registered for good; and the lifespan removes them when it ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

__all__ = ["Listeners", "listening"]

Listeners = Mapping[str, Callable[..., Any]]
"""Engine event names (``"before_cursor_execute"``...) and what to call for each."""


@contextlib.contextmanager
def listening(engine: Engine, listeners: Listeners) -> Iterator[None]:
    """Register ``listeners`` on ``engine`` for the block's duration."""
    for name, listener in listeners.items():
        event.listen(engine, name, listener)
    try:
        yield
    finally:
        for name, listener in listeners.items():
            event.remove(engine, name, listener)
