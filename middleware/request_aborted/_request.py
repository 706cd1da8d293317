"""One request: its token source, timer, connection state and final answer, in one object.

``HttpRequest`` *is* the request's ``CancellationTokenSource`` (a subclass), not an object beside
it: most requests never look at their token, so everything per request is one allocation wherever
it can be, and the source's hook methods (``_observed``, ``_cancelled``) reach the request without
a stored callback, which would make a reference cycle for the garbage collector to find.

It is the single owner of the server's ``receive`` (docs/hazards.md: a reader that drops messages
steals the body, a second reader races the app, hypercorn hands ``http.disconnect`` to one caller
only, uvicorn answers every later call at once):

* While nobody watches, the app's ``receive()`` goes straight to the server, one call at a time,
  and the request merely notes what passes: no task, no buffer.
* Once watching starts (``_watcher``: one or two ``watch_delay`` after the first look; or the
  first read of a request whose token may fire on its own), reads go through a ``Watcher``.
* A disconnect is remembered and answered to every later ``receive()``. A disconnect (or a ``send``
  that fails because the connection is gone: ``OSError`` in ASGI 2.4, uvloop's "handler is closed"
  ``RuntimeError``) before the response completed fires the token with ``ClientDisconnected``; one
  after it is just the server saying "done". The failing send is the only sign uvicorn-httptools
  gives of a pipelined request whose client left: it marks only the last request it parsed.

The timer (default timeout, named policy, ``@request_timeout``, deadline header), the shutdown
token and the end of an aborted request (``finish_aborted``: the log line, ``on_abort``, the edge's
answer) live here too; ``RequestAbortedMiddleware`` only builds the request and runs the app.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from threading import get_ident
from typing import TYPE_CHECKING, ClassVar, Final

from starlette.types import Message, Receive, Scope, Send

from ._context import SCOPE_KEY
from ._edge import end_response, is_closed_transport, is_fallout, log_abort, status_for
from ._exceptions import (
    ClientDisconnected,
    OperationCancelled,
    RequestTimedOut,
    ServerShuttingDown,
    describe,
)
from ._lifetime import lifetime_of
from ._loop import Loop, call_in_loop
from ._registration import Registration
from ._scope import TokenScope
from ._timeouts import TimeoutPolicy, resolve_policy
from ._token import CancellationToken, CancellationTokenSource
from ._watcher import DISCONNECT_TYPES, Watcher, Watchlist

if TYPE_CHECKING:
    from ._middleware import RequestAbortedMiddleware

__all__ = [
    "FIRED_AT_KEY",
    "GOING_AWAY",
    "STARTED_KEY",
    "STATUS_KEY",
    "HttpRequest",
    "WebSocketRequest",
]

logger = logging.getLogger("request_aborted")

FIRED_AT_KEY: Final = "request_aborted.fired_at"  # for on_abort hooks: when the token fired
STATUS_KEY: Final = "request_aborted.status"  # ...the status it ends with (as logged)
STARTED_KEY: Final = "request_aborted.response_started"  # ...and whether headers were out
GOING_AWAY: Final = 1001  # RFC 6455: the close code for a WebSocket ended by timeout or shutdown

_GIVEN_UP: Final[Message] = {"type": "http.disconnect"}  # what the app reads once its token fired
_OVER: Final[Message] = {"type": "http.disconnect"}


class HttpRequest(CancellationTokenSource):
    """One HTTP request's token source, timer and connection: the ``RequestContext`` handlers
    reach. See the module docstring."""

    __slots__ = (
        "_config",
        "_header_deadline",
        "_live_token",
        "_receive",
        "_registration",
        "_send",
        "_status",
        "_trailers",
        "_watcher",
        "_watchlist",
        "body_done",
        "completed",
        "disconnect",
        "interruptible",
        "reading",
        "started",
        "started_at",
    )

    _loop: Loop  # always set here, unlike on a plain source
    # What an interruptible read answers once the token fired (WebSockets say
    # "websocket.disconnect"): a class attribute, so HTTP requests pay nothing for it.
    given_up: ClassVar[Message] = _GIVEN_UP

    def __init__(
        self,
        config: RequestAbortedMiddleware,
        running: tuple[int, Loop, Watchlist | None],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        thread, loop, self._watchlist = running  # the thread, its loop and the loop's watchlist
        self._init_source(config.lock, loop, thread)
        self._unobserved = True  # the first look at the token starts the watching (see _observed)
        self._config = config
        self._receive = receive
        self._send = send
        self._watcher: Watcher | None = None  # created when watching starts (see _watcher)
        # Set when the token may fire on its own (a timeout, shutdown): then a read of the body
        # must be interruptible, so the app's reads go through the watcher rather than straight
        # to the server, and a fired token answers them.
        self.interruptible = False
        self.started = False
        self.completed = False
        self._trailers = False
        self.disconnect: Message | None = None
        self.body_done = False
        self.reading = False  # a server receive() is outstanding, on behalf of the app
        self.started_at = time.monotonic()
        # Held strongly only while the request runs (end() drops it): a source that keeps
        # its token is a reference cycle.
        self._live_token: CancellationToken | None = CancellationToken(self)
        scope[SCOPE_KEY] = self._live_token
        self._status = config.timeout_status
        self._header_deadline: float | None = None
        self._registration: Registration | None = None
        # An empty state holds no lifetime (whose shutdown token the request would follow).
        if not config.arms_nothing or scope.get("state"):
            self._arm_from(config, scope)

    def _arm_from(self, config: RequestAbortedMiddleware, scope: Scope) -> None:
        """What may fire the token on its own: the default timeout, a deadline header, shutdown."""
        if config.deadline_headers:
            self._read_deadline_headers(scope)
        if config.default_policy.timeout is not None or self._header_deadline is not None:
            self._arm(config.default_policy, config.default_policy_name)
        shutdown = config.shutdown
        if shutdown is None and scope.get("state"):
            lifetime = lifetime_of(scope)
            if lifetime is not None:
                shutdown = lifetime.grace_expired
        if shutdown is not None:
            self._registration = shutdown.register(self._shutting_down)
            self.make_interruptible()

    @property
    def token(self) -> CancellationToken:
        token = self._live_token
        return token if token is not None else CancellationToken(self)

    # -- receive ---------------------------------------------------------------------------

    async def receive(self) -> Message:
        watcher = self._watcher
        if watcher is None:
            disconnect = self.disconnect
            if disconnect is not None:
                return disconnect
            if not self.interruptible and not self.reading:
                return await self.read_directly()
            watcher = self._watch()
        return await watcher.receive()

    async def read_directly(self) -> Message:
        """One ``receive()`` straight from the server, on behalf of the app."""
        self.reading = True
        try:
            message = await self._receive()
        finally:
            self.reading = False
            watcher = self._watcher
            if watcher is not None:
                watcher.wake_pump()
                watcher.wake_readers()
        self.note(message)
        return message

    def note(self, message: Message) -> None:
        """Remember what the server said: the body's end, or the client's leaving."""
        if message["type"] == "http.request" and not message.get("more_body", False):
            self.body_done = True
        elif message["type"] in DISCONNECT_TYPES and self.disconnect is None:
            self.disconnect = message
            if not self.completed:
                self.fire(ClientDisconnected())

    def fire(self, reason: BaseException) -> None:
        """Fire the token; a failing user callback is logged, not raised into the protocol flow."""
        try:
            self.cancel(reason)
        except BaseException:  # deliberate: a user callback must not break the protocol flow
            logger.exception("a cancellation callback raised while the request was aborted")

    # -- watching --------------------------------------------------------------------------

    def on_loop(self, callback: Callable[..., object], *args: object) -> None:
        """Call ``callback(*args)`` now on the request's own thread, else hand it to its loop."""
        call_in_loop(self._loop, callback, *args, thread=self._thread)

    def make_interruptible(self) -> None:
        """Called when the token may fire without a disconnect (see ``__init__``)."""
        self.interruptible = True

    def start_watching(self) -> None:
        """Start the pump now (the watchlist calls this), unless there is nothing to watch."""
        if self.disconnect is None and not self.completed:
            self._watch().start()

    def _watch(self) -> Watcher:
        watcher = self._watcher
        if watcher is None:
            watcher = self._watcher = Watcher(
                self, self._receive, self._loop, self._config.max_buffer
            )
        return watcher

    def _observed(self, on_thread: bool = False) -> None:
        # Application code looked at the token, from whichever thread: start watching. (on_loop,
        # is_current and the common case of _watch_soon with the watchlist's add(), spelled out:
        # this runs for every request that observes its token. A held scope has asked for the
        # thread already, and get_ident() is a third of this hook's cost.)
        self._unobserved = False
        if not on_thread and self._thread != get_ident():
            self._loop.call_soon_threadsafe(self._watch_soon)
            return
        watchlist = self._watchlist
        if watchlist is not None and self._watcher is None:
            watchlist.newer.append(self)
            if watchlist.timer is None:
                watchlist.start()
        else:
            self._watch_soon()

    def _cancelled(self) -> None:
        watcher = self._watcher
        if self.interruptible and watcher is not None:
            watcher.wake_readers()  # readers parked in receive() get their synthetic disconnect

    def _watch_soon(self) -> None:
        # Most requests that glance at their token are over within a millisecond or two, long
        # before a client could give up on them; a pump for each would cost more than the
        # request. So the pump starts a ``watch_delay`` or two after the first look, if still
        # wanted.
        watcher = self._watcher
        if watcher is None or not watcher.pumping:
            watchlist = self._watchlist
            if watchlist is not None:
                watchlist.add(self)
            else:
                self.start_watching()

    # -- send --------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            if "trailers" in message:  # rarely there: a membership test is the cheaper question
                self._trailers = message["trailers"]
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

    def _complete(self) -> None:
        # Mark completion *before* the server sees the last message: while handling it the server
        # may wake a pending receive() with http.disconnect, which then means "done", not "gone".
        self.completed = True
        if self._timer is not None:
            self.cancel_after(None)  # a finished response can no longer time out

    def raised_here(self, exc: BaseException) -> bool:
        """Whether ``exc`` came out of this request's connection, through this request.

        Read from the traceback, so the common path pays nothing: the request's ``send`` or
        ``receive`` frame, with this request as ``self``, lies between the edge and the raise.
        A handler's own ``OSError`` never passes through them.
        """
        tb = exc.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_code in _CONNECTION_CODE and frame.f_locals.get("self") is self:
                return True
            tb = tb.tb_next
        return False

    # -- running the app and ending the request ------------------------------------------------

    async def run_enforced(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app under ``enforce_after`` (if set): cooperative first, forced later."""
        config = self._config
        if config.enforce_after is None:
            await config.app(scope, receive, send)
            return
        enforcer = TokenScope(self.token, delay=config.enforce_after)
        try:
            async with enforcer:
                await config.app(scope, receive, send)
        finally:
            if enforcer.cancelled_caught:
                logger.warning(
                    "%s %s ignored its cancelled token for %gs and was cancelled; "
                    "pass the token to the work it awaits",
                    scope.get("method", ""),
                    _route_name(scope),
                    config.enforce_after,
                )

    def end(self) -> bool:
        """Stop watching, and drop what would tie the token to the server once the request is over;
        whether the token fired. If it did, the request's answer is still to be sent
        (``finish_aborted()``), and ``detach()`` follows it; if not, this detaches the request.

        The token outlives the request (it is in the scope, maybe in a task the handler started)
        and refers to this object, so this object must not keep the token, nor the server's
        ``receive``/``send`` (whose owner keeps the scope): those would be reference cycles.
        ``send`` goes last (``detach``), after an aborted request's final answer.
        """
        # Code that looks at the token after the request (a task it spawned, a test) must not
        # start a pump on a connection the server now owns, maybe on a loop already closed.
        self._unobserved = False
        self._live_token = None
        self._receive = _receive_over
        if self.disconnect is None:
            self.disconnect = _OVER  # a late receive() hears that the request is gone
        registration = self._registration
        if registration is not None:
            self._registration = None
            registration.unregister()
        watcher = self._watcher
        if watcher is not None:
            self._watcher = None  # the watcher refers to this request: no cycle left behind
            watcher.stop()
        if self._timer is not None or self._parents:
            CancellationTokenSource.close(self)
        if self._reason is None:
            self._send = _send_over  # detach(), spelled out: nothing more will be sent for it
            return False
        return True

    def detach(self) -> None:
        """The last tie from the token (which outlives the request) to the server's objects
        (which keep the scope, which keeps the token): a reference cycle if left."""
        self._send = _send_over

    def absorbs(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by the app after the token fired, is the abort's fallout."""
        return is_fallout(exc, self)

    async def finish_aborted(self, scope: Scope) -> None:
        """Report the abort and give the client the edge's answer (see ``_edge``)."""
        reason = self._reason
        assert reason is not None
        status = status_for(reason, self._status)
        # Reported before the answer goes out: sending its last byte ends a tracing span that
        # wraps us (OpenTelemetry's ASGI middleware), and on_abort hooks annotate that span.
        self._report(scope, reason, status)
        await end_response(
            self.send,
            reason,
            status,
            started=self.started,
            completed=self.completed,
            body_unread=not self.body_done and _expects_body(scope),
            server_send=self._send,
            http_version=scope.get("http_version", "1.1"),
        )

    def _report(self, scope: Scope, reason: BaseException, status: int) -> None:
        """The one log line and the ``on_abort`` call, HTTP and WebSocket alike."""
        elapsed = time.monotonic() - self.started_at
        scope[FIRED_AT_KEY] = self._cancelled_at
        scope[STATUS_KEY] = status
        scope[STARTED_KEY] = self.started
        config = self._config
        log_abort(scope, reason, status, elapsed, config.abort_log)
        hook = config.on_abort
        if hook is not None:
            try:
                hook(scope, reason, elapsed)
            except Exception:
                logger.exception("the on_abort hook raised")

    # -- timeouts ------------------------------------------------------------------------------

    def set_timeout(self, timeout: float | str | None) -> None:
        """Re-arm the request's timer for an endpoint's own timeout, from any thread."""
        policy, name = resolve_policy(timeout, self._config.policies)
        self.on_loop(self._arm, policy, name)

    def _arm(self, policy: TimeoutPolicy, name: str | None) -> None:
        deadline = None if policy.timeout is None else self.started_at + policy.timeout
        timeout, status = policy.timeout, policy.status_code
        default_status = self._config.timeout_status
        if name is None:  # a plain number, not a named policy
            status = default_status
        header = self._header_deadline
        if header is not None and (deadline is None or header < deadline):
            deadline, timeout, status = header, header - self.started_at, default_status
            name = "deadline-header"
        self._status = status
        if deadline is None:
            self.cancel_after(None)
        elif not self.completed:
            reason = RequestTimedOut(timeout, name)
            self.cancel_after(deadline - time.monotonic(), reason)
            self.make_interruptible()

    def _read_deadline_headers(self, scope: Scope) -> None:
        headers = self._config.deadline_headers
        for name, value in scope.get("headers", ()):
            header = headers.get(name.lower())
            if header is None:
                continue
            budget = header.parse(value.decode("latin-1"))
            if budget is None:
                logger.debug("ignoring malformed %s header: %r", header.name, value)
                continue
            deadline = self.started_at + budget
            if self._header_deadline is None or deadline < self._header_deadline:
                self._header_deadline = deadline

    def _shutting_down(self, reason: BaseException) -> None:
        shutdown = reason if isinstance(reason, ServerShuttingDown) else ServerShuttingDown()
        self.on_loop(self.fire, shutdown)


class WebSocketRequest(HttpRequest):
    """A WebSocket's source and connection. The client closing is a WebSocket's normal end: the
    token fires with ``ClientDisconnected``, but nothing is logged, no hook is called and every
    exception the app raises (``WebSocketDisconnect`` first of all: FastAPI's tests, telemetry of
    close codes and the server's own logging rely on it) propagates as if we were not there, only
    our own ``OperationCancelled`` excepted. A timeout or a shutdown ends it as it ends an HTTP
    request: the app's next ``receive()`` hears a disconnect (code 1001), its fallout is absorbed,
    the socket is closed with 1001 "going away" (refused with 403 before it was accepted), and it
    gets the log line and the ``on_abort`` call."""

    __slots__ = ()

    given_up: ClassVar[Message] = {"type": "websocket.disconnect", "code": GOING_AWAY}

    # A look is answered as a plain source answers it, with no watching: a WebSocket app reads
    # its messages itself, so the client's leaving reaches the token through that read (note()).
    _observed = CancellationTokenSource._observed

    def absorbs(self, exc: BaseException) -> bool:
        if isinstance(self._reason, ClientDisconnected):
            return _only_operation_cancelled(exc)
        return is_fallout(exc, self)

    async def finish_aborted(self, scope: Scope) -> None:
        reason = self._reason
        assert reason is not None
        if isinstance(reason, ClientDisconnected):
            return  # the normal end of a WebSocket
        if not self.completed:
            # Close reasons are at most 123 bytes of UTF-8 (RFC 6455 5.5).
            text = describe(reason).encode()[:123].decode(errors="ignore")
            close = {"type": "websocket.close", "code": GOING_AWAY, "reason": text}
            try:
                await self.send(close)
            except Exception as exc:  # the connection is going away; the log line says enough
                logger.debug("could not close the WebSocket of an aborted request: %r", exc)
        self._report(scope, reason, GOING_AWAY)


# The frames an error from the server's receive()/send() passes through (a pump's error is
# raised again from receive()).
_CONNECTION_CODE = frozenset(
    {
        HttpRequest.send.__code__,
        HttpRequest.receive.__code__,
        HttpRequest.read_directly.__code__,
    }
)


def _only_operation_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_operation_cancelled(inner) for inner in exc.exceptions)
    return isinstance(exc, OperationCancelled)


def _expects_body(scope: Scope) -> bool:
    """Whether an HTTP/1 request announced a body (HTTP/2 ends the stream, not the connection)."""
    if scope.get("http_version") not in ("1.0", "1.1"):
        return False
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def _receive_over() -> Message:
    raise RuntimeError("the request is over: its receive() is closed")


async def _send_over(message: Message) -> None:
    raise RuntimeError("the request is over: its send() is closed")


def _route_name(scope: Scope) -> str:
    """The path and endpoint of a request, for log lines (the package's only copy)."""
    endpoint = scope.get("endpoint")
    name = getattr(endpoint, "__qualname__", None)
    return f"{scope.get('path', '')} ({name})" if name else str(scope.get("path", ""))
