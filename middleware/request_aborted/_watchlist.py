"""Requests waiting out their ``watch_delay`` before their connection is watched: one timer for all.

Most handlers that look at their token finish within a millisecond or two, long before a client
could give up on them, and a watcher task for each would cost more than the handler. So a request
that observed its token joins the watchlist, and only if it is still running ``watch_delay`` later
does its channel start watching. A timer per request would cost a timer handle per request; the
delay is the same for every request of a middleware, so they join in the order they come due and
one timer, armed for the oldest, serves the whole list.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from ._loop import Handle, Loop

__all__ = ["Watchlist"]


class Watched(Protocol):
    """What the watchlist needs of a channel."""

    _watch_at: float

    def _start_pump(self) -> None: ...


class Watchlist:
    """The channels of one middleware on one loop that start watching when their delay is up.

    Used from the loop's thread only. The timer is owned here: it re-arms itself while channels
    wait and disappears when the list is empty (or with its loop).
    """

    __slots__ = ("_delay", "_handle", "_loop", "_waiting")

    def __init__(self, loop: Loop, delay: float) -> None:
        self._loop = loop
        self._delay = delay
        self._waiting: deque[Watched] = deque()
        self._handle: Handle | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, channel: Watched) -> None:
        """Have ``channel`` start watching when the delay is up, if it still must by then."""
        due = channel._watch_at = self._loop.time() + self._delay
        self._waiting.append(channel)
        if self._handle is None:
            self._handle = self._loop.call_at(due, self._tick)

    def _tick(self) -> None:
        self._handle = None
        waiting = self._waiting
        now = self._loop.time()
        while waiting and waiting[0]._watch_at <= now:
            waiting.popleft()._start_pump()
        if waiting:
            self._handle = self._loop.call_at(waiting[0]._watch_at, self._tick)
