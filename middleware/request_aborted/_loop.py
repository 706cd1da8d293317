"""Running a callback on an event loop from whichever thread fires a token."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["call_in_loop"]


def call_in_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """Call ``callback(*args)`` now when already on ``loop``, else hand it to the loop's thread.

    Tokens fire in the thread that cancels them (a timer, a worker thread, a signal handler), but
    futures, tasks and timers belong to their loop. Raises ``RuntimeError`` if the loop is closed.
    """
    if asyncio._get_running_loop() is loop:
        callback(*args)
    else:
        loop.call_soon_threadsafe(callback, *args)
