"""Watching a request's connection: the pump, its buffer, the readers it wakes, and the watchlist.

Servers report a vanished client only through ``receive()``, so watching means keeping one read
outstanding while the handler is busy elsewhere: the *pump*, a task that reads ahead, queues body
chunks (in order, bounded by ``max_buffer``) for the app's next ``receive()``, and tells the
request of a disconnect the moment it arrives. Readers that must wait (for the pump, for another
reader, for a fired token) park here too.

A ``Watcher`` exists only for requests that need one: most requests never look at their token and
read their body straight from the server (``_request``), carrying none of this state. A request
that observed its token joins the ``Watchlist`` and gets a watcher only if it still runs a
``watch_delay`` or two later; a request whose token may fire on its own (a timeout, shutdown) gets
one at its first ``receive()``, so that read can be interrupted.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Protocol

from ._loop import Handle, Loop, TaskHandle, Waiter, is_cancellation

if TYPE_CHECKING:
    from starlette.types import Message, Receive

__all__ = ["DISCONNECT_TYPES", "Watched", "Watcher", "Watchlist"]

DISCONNECT_TYPES = frozenset({"http.disconnect", "websocket.disconnect"})


class Watched(Protocol):
    """What a watcher needs of its request (``_request.HttpRequest``)."""

    @property
    def disconnect(self) -> Message | None: ...

    @property
    def body_done(self) -> bool: ...

    @property
    def reading(self) -> bool: ...

    @property
    def interruptible(self) -> bool: ...

    @property
    def completed(self) -> bool: ...

    @property
    def is_cancellation_requested(self) -> bool: ...

    @property
    def given_up(self) -> Message: ...

    def note(self, message: Message) -> None: ...

    async def read_directly(self) -> Message: ...


class Watcher:
    """One request's pump, read-ahead buffer and parked readers; see the module docstring."""

    __slots__ = (
        "_buffer",
        "_buffered",
        "_error",
        "_loop",
        "_max_buffer",
        "_pump",
        "_receive",
        "_request",
        "_waiters",
        "_wakeup",
    )

    def __init__(self, request: Watched, receive: Receive, loop: Loop, max_buffer: int) -> None:
        self._request = request
        self._receive = receive
        self._loop = loop
        self._max_buffer = max_buffer
        self._buffer: deque[Message] = deque()
        self._buffered = 0
        self._pump: TaskHandle | None = None
        self._error: BaseException | None = None
        self._wakeup: Waiter[None] | None = None
        self._waiters: list[Waiter[None]] = []

    @property
    def pumping(self) -> bool:
        """Whether a pump task is reading ahead."""
        return self._pump is not None

    async def receive(self) -> Message:
        """The app's ``receive()`` once the request has a watcher."""
        request = self._request
        while True:
            buffer = self._buffer
            if buffer:
                message = buffer.popleft()
                self._buffered -= _weight(message)
                self.wake_pump()
                return message
            disconnect = request.disconnect
            if disconnect is not None:
                return disconnect
            if self._error is not None:
                # Sticky, like the disconnect: the pump is gone, so every reader must hear of it.
                raise self._error
            if request.interruptible:
                if request.is_cancellation_requested:
                    return request.given_up  # timed out or shutting down: the body is not wanted
                if self._pump is None:
                    self.start()
            elif self._pump is None and not request.reading:
                return await request.read_directly()
            await self._wait_for_news()

    def start(self) -> None:
        """Start the pump, unless there is nothing left to watch."""
        request = self._request
        if self._pump is None and request.disconnect is None and not request.completed:
            self._pump = self._loop.create_task(self._run())

    def stop(self) -> None:
        """Stop watching. The pump is cancelled, not awaited: it is parked in the server's
        ``receive()`` and finishes at the loop's next turn, so the request need not wait for two
        more turns of the loop to end (measured: that wait was most of the pump's cost)."""
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()

    async def _wait_for_news(self) -> None:
        waiter = self._loop.create_future()
        waiters = self._waiters
        waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in waiters:
                waiters.remove(waiter)

    def wake_readers(self) -> None:
        """Wake every reader parked in ``receive()``: something they wait for has changed."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def wake_pump(self) -> None:
        """Let a pump that waits for the app (mid-read, or a full buffer) read again."""
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _run(self) -> None:
        request = self._request
        try:
            while request.disconnect is None:
                if request.reading or (self._buffer and self._buffered >= self._max_buffer):
                    # The app is mid-read, or has not drained what we hold: wait for it. (An empty
                    # buffer never blocks, or max_buffer=0 would leave nobody reading at all.)
                    self._wakeup = self._loop.create_future()
                    await self._wakeup
                    continue
                message = await self._receive()
                if message["type"] not in DISCONNECT_TYPES:
                    if request.body_done:
                        # ASGI allows only a disconnect after the last body chunk. A server (or a
                        # body-replaying wrapper) that answers more cannot be watched without
                        # spinning: stop watching, and let the app read for itself again.
                        self._pump = None
                        self.wake_readers()
                        return
                    self._buffer.append(message)
                    self._buffered += _weight(message)
                request.note(message)
                self.wake_readers()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # deliberate: raised from the app's next receive()
            if is_cancellation(exc):  # trio's Cancelled: stop() cancelled the pump
                raise
            self._error = exc
            self.wake_readers()


def _weight(message: Message) -> int:
    """What a queued message counts against ``max_buffer``: its bytes, and never nothing."""
    return max(1, len(message.get("body", b"")))


class Watchable(Protocol):
    """What the watchlist needs of a request: whether its response is complete, and how to start
    its watcher."""

    @property
    def completed(self) -> bool: ...

    def start_watching(self) -> None: ...


class Watchlist:
    """Requests waiting out their ``watch_delay`` before their connection is watched: one timer.

    Most handlers that look at their token finish within a millisecond or two, long before a
    client could give up on them, and a watcher task for each would cost more than the handler.
    So a request that observed its token joins the watchlist, and only if it is still running a
    ``watch_delay`` or so later does it start watching.

    Joining is one list append, on a path every observed request takes: no clock reading, no due
    time per request. Requests join the newer of two lists; the timer, every ``watch_delay`` while
    any wait, starts watching for the requests of the older list, which joined before the
    previous tick, and the newer list becomes the older. So a request is watched between one and
    two ``watch_delay`` after its first look (a request finished by then is skipped by its own
    ``start_watching()``).

    One per middleware and loop, used from the loop's thread only. The timer re-arms itself while
    requests wait and disappears when both lists are empty (or with its loop).

    ``add()`` is ``newer.append()`` and, when ``timer`` is ``None``, ``start()``: the request's
    first look spells that out (one call fewer on the path of every request that observes its
    token), so both are public.
    """

    __slots__ = ("_delay", "_loop", "_older", "newer", "timer")

    def __init__(self, loop: Loop, delay: float) -> None:
        self._loop = loop
        self._delay = delay
        self.newer: list[Watchable] = []  # joined since the last tick
        self._older: list[Watchable] = []  # joined before it: watched at the next
        self.timer: Handle | None = None  # the next tick, while any request waits

    def __len__(self) -> int:
        return len(self.newer) + len(self._older)

    def add(self, request: Watchable) -> None:
        """Have ``request`` start watching a ``watch_delay`` or so from now, if it still must."""
        self.newer.append(request)
        if self.timer is None:
            self.start()

    def start(self) -> None:
        """Arm the timer (it is not armed): the next tick in a ``watch_delay``."""
        self.timer = self._loop.call_later(self._delay, self._tick)

    def _tick(self) -> None:
        due = self._older
        self._older = self.newer
        self.newer = []
        for request in due:
            if not request.completed:  # most are: then not even a call (start_watching() asks too)
                request.start_watching()
        self.timer = self._loop.call_later(self._delay, self._tick) if self._older else None
