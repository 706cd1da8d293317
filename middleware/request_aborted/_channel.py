"""One request's connection to the server: the single owner of ``receive``, a watcher on ``send``.

Servers report a vanished client only through ``receive()``. Reading it ourselves is full of traps
(docs/hazards.md): a reader that drops messages steals the body, a second reader races the app,
hypercorn hands ``http.disconnect`` to one caller only, uvicorn answers every later call at once.
So the channel is the only code that ever calls the server's ``receive``:

* While nobody has looked at the token, the app's own ``receive()`` calls go straight to the server
  (one at a time) and the channel merely notes what passes: no task, no buffer.
* The first time application code observes the token, the channel starts a *pump* task that keeps
  one read outstanding, so a disconnect is seen even while the handler is busy elsewhere. Body
  chunks the pump reads are queued, in order and bounded, for the app's next ``receive()``.
* A disconnect is remembered and answered to every later ``receive()``, waking all readers.
* A disconnect (or a ``send`` that fails because the connection is gone: ``OSError`` in ASGI 2.4,
  uvloop's "handler is closed" ``RuntimeError``) before the response completed fires the token with
  ``ClientDisconnected``; a disconnect after it is just the server saying "done". The failing send
  is the only sign uvicorn-httptools gives of a pipelined request whose client left: it marks only
  the last request it parsed as disconnected.

The channel *is* the request's token source (a subclass), not an object beside it: most requests
never look at their token, so everything per request is one allocation wherever it can be, and
the source's hook methods (``_observed``, ``_cancelled``) reach the channel without a stored
callback, which would make a reference cycle for the garbage collector to find.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Protocol

from ._edge import is_closed_transport
from ._exceptions import ClientDisconnected
from ._loop import Loop, TaskHandle, Waiter, is_cancellation
from ._token import CancellationTokenSource
from ._watchlist import Watchlist

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Send

__all__ = ["RequestChannel"]

logger = logging.getLogger("request_aborted")


class ChannelOptions(Protocol):
    """The middleware's settings a channel reads (the middleware itself provides them)."""

    @property
    def max_buffer(self) -> int: ...


_DISCONNECT_TYPES = frozenset({"http.disconnect", "websocket.disconnect"})
_GIVEN_UP: Message = {"type": "http.disconnect"}  # what the app reads once its token fired


class RequestChannel(CancellationTokenSource):
    """Owns ``receive`` and watches ``send`` for one request; see the module docstring."""

    __slots__ = (
        "_body_done",
        "_buffer",
        "_buffered",
        "_disconnect",
        "_options",
        "_pump",
        "_pump_error",
        "_pump_wakeup",
        "_reading",
        "_receive",
        "_send",
        "_trailers",
        "_waiters",
        "_watch_at",
        "_watchlist",
        "completed",
        "interruptible",
        "started",
    )

    _loop: Loop  # always set here, unlike on a plain source
    # What an interruptible read answers once the token fired (a subclass for WebSockets says
    # "websocket.disconnect"): a class attribute, so HTTP requests pay nothing for it.
    given_up: ClassVar[Message] = _GIVEN_UP

    def __init__(
        self,
        receive: Receive,
        send: Send,
        running: tuple[int, Loop, Watchlist | None],
        lock: threading.Lock,
        options: ChannelOptions,
    ) -> None:
        # This runs for every request, so it sets the source's slots itself rather than paying
        # for a chained CancellationTokenSource.__init__ call (a test checks none is missed).
        # The lock guards a few dictionary operations and is never held while taking another
        # lock, so the requests of one middleware can share theirs.
        self._reason: BaseException | None = None
        self._cancelled_at: float | None = None
        self._callbacks = None
        self._lock = lock
        self._unobserved = False
        self._own_deadline: float | None = None
        self._parents = ()
        self._timer = None
        self._token = None
        self._thread, self._loop, self._watchlist = running
        self._receive = receive
        self._send = send
        self._options = options
        self._watch_at = -1.0  # when the watchlist starts the pump (while it waits there)
        # Set when the token may fire on its own (a timeout, shutdown): then a read of the body
        # must be interruptible, so the app's reads go through the pump rather than straight to
        # the server, and a fired token answers them.
        self.interruptible = False
        self.started = False
        self.completed = False
        self._trailers = False
        self._disconnect: Message | None = None
        self._buffer: deque[Message] | None = None
        self._buffered = 0
        self._body_done = False
        self._reading = False  # a server receive() is outstanding, on behalf of the app
        self._pump: TaskHandle | None = None
        self._pump_error: BaseException | None = None
        self._pump_wakeup: Waiter[None] | None = None
        self._waiters: list[Waiter[None]] | None = None

    # -- receive ---------------------------------------------------------------------------

    async def receive(self) -> Message:
        while True:
            buffer = self._buffer
            if buffer:
                message = buffer.popleft()
                self._buffered -= _weight(message)
                self._wake_pump()
                return message
            if self._disconnect is not None:
                return self._disconnect
            if self._pump_error is not None:
                # Sticky, like the disconnect: the pump is gone, so every reader must hear of it.
                raise self._pump_error
            if self.interruptible:
                if self._reason is not None:
                    return self.given_up  # timed out or shutting down: the body is not wanted
                if self._pump is None:
                    self._start_pump()
            elif self._pump is None and not self._reading:
                return await self._read_directly()
            await self._wait_for_news()

    async def _read_directly(self) -> Message:
        self._reading = True
        try:
            message = await self._receive()
        finally:
            self._reading = False
            self._wake_pump()
            self._wake_waiters()
        self._note(message)
        return message

    def _note(self, message: Message) -> None:
        if message["type"] == "http.request" and not message.get("more_body", False):
            self._body_done = True
        elif message["type"] in _DISCONNECT_TYPES and self._disconnect is None:
            self._disconnect = message
            if not self.completed:
                self.fire(ClientDisconnected())

    def fire(self, reason: BaseException) -> None:
        """Fire the token; a failing user callback is logged, not raised into the protocol flow."""
        try:
            self.cancel(reason)
        except BaseException:  # deliberate: a user callback must not break the protocol flow
            logger.exception("a cancellation callback raised while the request was aborted")

    async def _wait_for_news(self) -> None:
        waiter = self._loop.create_future()
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = []
        waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in waiters:
                waiters.remove(waiter)

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, None
        if waiters:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # -- the pump ----------------------------------------------------------------------------

    def on_loop(self, callback: Callable[..., object], *args: object) -> None:
        """Call ``callback(*args)`` now on the request's own thread, else hand it to its loop.

        ``_loop.call_in_loop`` for a request: the request's loop runs in the request's thread for
        as long as the request lives, so comparing threads answers "am I on the loop?" without
        asking asyncio, whose check makes a system call on CPython 3.11.
        """
        if self._thread == threading.get_ident():
            callback(*args)
        else:
            self._loop.call_soon_threadsafe(callback, *args)

    def _observed(self) -> None:
        # Application code looked at the token, from whichever thread: start watching.
        self.on_loop(self._watch_soon)

    def _cancelled(self) -> None:
        if self.interruptible:
            self._wake_waiters()  # readers parked in receive() get their synthetic disconnect

    def _watch_soon(self) -> None:
        # Most requests that glance at their token are over within a millisecond or two, long
        # before a client could give up on them; a pump for each would cost more than the
        # request. So the pump starts ``watch_delay`` after the first look, if still wanted.
        if self._watch_at < 0 and self._pump is None:
            watchlist = self._watchlist
            if watchlist is not None:
                watchlist.add(self)
            else:
                self._start_pump()

    def _start_pump(self) -> None:
        if self._pump is None and self._disconnect is None and not self.completed:
            self._pump = self._loop.create_task(self._run_pump())

    def make_interruptible(self) -> None:
        """Called by the owner when the token may fire without a disconnect (see __init__)."""
        self.interruptible = True

    async def _run_pump(self) -> None:
        try:
            while self._disconnect is None:
                if self._reading or (self._buffer and self._buffered >= self._options.max_buffer):
                    # The app is mid-read, or has not drained what we hold: wait for it. (An empty
                    # buffer never blocks, or max_buffer=0 would leave nobody reading at all.)
                    self._pump_wakeup = self._loop.create_future()
                    await self._pump_wakeup
                    continue
                message = await self._receive()
                if message["type"] not in _DISCONNECT_TYPES:
                    if self._body_done:
                        # ASGI allows only a disconnect after the last body chunk. A server (or a
                        # body-replaying wrapper) that answers more cannot be watched without
                        # spinning: stop watching, and let the app read for itself again.
                        self._pump = None
                        self._wake_waiters()
                        return
                    if self._buffer is None:
                        self._buffer = deque()
                    self._buffer.append(message)
                    self._buffered += _weight(message)
                self._note(message)
                self._wake_waiters()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # deliberate: raised from the app's next receive()
            if is_cancellation(exc):  # trio's Cancelled: close() cancelled the pump
                raise
            self._pump_error = exc
            self._wake_waiters()

    def _wake_pump(self) -> None:
        wakeup, self._pump_wakeup = self._pump_wakeup, None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def close(self) -> None:
        """Stop watching. The pump is cancelled, not awaited: it is parked in the server's
        ``receive()`` and finishes at the loop's next turn, so the request need not wait for two
        more turns of the loop to end (measured: that wait was most of the pump's cost). A
        channel still on the watchlist stays there; the owner marks it over, so it never starts."""
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()

    # -- send --------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            self._trailers = message.get("trailers", False)
        elif kind == "http.response.body" or kind == "http.response.zerocopysend":
            if not message.get("more_body", False) and not self._trailers:
                self.completed = True  # as in _complete(), inlined on the path every request takes
                if self._timer is not None:
                    self.cancel_after(None)
        elif kind == "http.response.trailers":
            if not message.get("more_trailers", False):
                self._complete()
        elif kind == "http.response.pathsend":
            self._complete()
        elif kind == "websocket.accept":
            self.started = True
        elif kind == "websocket.close":
            self.started = True
            self._complete()
        try:
            await self._send(message)
        except (OSError, RuntimeError) as exc:
            # ASGI 2.4: the server reports a closed connection by raising OSError from send();
            # uvicorn on uvloop raises the transport's RuntimeError instead. Other RuntimeErrors
            # (a malformed response) are the app's bugs: they fire nothing.
            if is_closed_transport(exc):
                self.fire(ClientDisconnected())
            raise

    def raised_here(self, exc: BaseException) -> bool:
        """Whether ``exc`` came out of this request's connection, through this channel.

        Read from the traceback, so the common path pays nothing: the channel's ``send`` or
        ``receive`` frame, with this channel as ``self``, lies between the edge and the raise.
        A handler's own ``OSError`` never passes through them.
        """
        tb = exc.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_code in _CONNECTION_CODE and frame.f_locals.get("self") is self:
                return True
            tb = tb.tb_next
        return False

    def _complete(self) -> None:
        # Mark completion *before* the server sees the last message: while handling it the server
        # may wake a pending receive() with http.disconnect, which then means "done", not "gone".
        self.completed = True
        if self._timer is not None:
            self.cancel_after(None)  # a finished response can no longer time out


# The frames an error from the server's receive()/send() passes through (a pump's error is
# raised again from receive()).
_CONNECTION_CODE = frozenset(
    {
        RequestChannel.send.__code__,
        RequestChannel.receive.__code__,
        RequestChannel._read_directly.__code__,
    }
)


def _weight(message: Message) -> int:
    """What a queued message counts against ``max_buffer``: its bytes, and never nothing."""
    return max(1, len(message.get("body", b"")))
