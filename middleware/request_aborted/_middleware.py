"""``RequestAbortedMiddleware``: ASP.NET Core's ``HttpContext.RequestAborted`` for ASGI.

Pure ASGI, and cheap where the token is not used: per request one object (the token source, the
channel and the request's state in one), its token and one context-variable set, and nothing left
behind for the cyclic garbage collector. Watching the connection, the only costly part, starts
only for requests still running ``watch_delay`` after application code first observed the token
(see ``_channel`` and ``_watchlist``). Put it outermost, before anything that reads the body, so it
owns ``receive`` and its token is bound before routing and exception handlers run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import _context
from ._channel import RequestChannel
from ._deadline import DeadlineHeader
from ._edge import end_response, is_fallout, log_abort, status_for
from ._exceptions import (
    ClientDisconnected,
    OperationCancelled,
    RequestTimedOut,
    ServerShuttingDown,
    describe,
)
from ._log import AbortLog
from ._loop import Loop, running_loop
from ._rates import MinDataRate, RateWatch
from ._scope import TokenScope
from ._timeouts import TimeoutPolicy, resolve_policy
from ._token import CancellationToken, CancellationTokenSource, Registration
from ._watchlist import Watchlist

__all__ = ["AbortHook", "RequestAbortedMiddleware"]

logger = logging.getLogger("request_aborted")

AbortHook = Callable[[Scope, BaseException, float], object]
"""Called once per aborted request with ``(scope, reason, elapsed_seconds)``.

It runs after the handler returned and before the edge's 504/503 is sent (so a tracing span that
wraps the middleware is still open); the scope then holds ``request_aborted.fired_at``,
``request_aborted.status`` and ``request_aborted.response_started``."""

FIRED_AT_KEY: Final = "request_aborted.fired_at"  # for on_abort hooks: when the token fired
STATUS_KEY: Final = "request_aborted.status"  # ...the status it ends with (as logged)
STARTED_KEY: Final = "request_aborted.response_started"  # ...and whether headers were out
DEFAULT_MAX_BUFFER: Final = 1 << 20
DEFAULT_WATCH_DELAY: Final = 0.001  # see the class docstring
GOING_AWAY: Final = 1001  # RFC 6455: the close code for a WebSocket ended by timeout or shutdown
MAX_WATCH_DELAY: Final = 1.0


class RequestAbortedMiddleware:
    """Give every HTTP request and WebSocket a token that fires when the work is no longer wanted.

    * ``timeout``: default request timeout, in seconds or as a policy name; ``None`` (default) is
      no timeout. ``policies`` names further timeouts for ``@request_timeout("name")``.
    * ``timeout_status``: the status sent when a request times out before its response started.
    * ``deadline_headers``: inbound headers (``"grpc-timeout"``, ``"x-request-timeout-ms"``...)
      that may shorten, never lengthen, a request's budget. Off by default.
    * ``enforce_after``: seconds after the token fired at which a handler that still runs is
      cancelled outright and named in a WARNING. Off by default: cancellation is cooperative.
    * ``shutdown``: a token whose firing ends every request still running with
      ``ServerShuttingDown``. Defaults to ``grace_expired`` of the ``ApplicationLifetime`` found
      in the lifespan state, when the app's lifespan is wrapped by one.
    * ``on_abort``: called once per aborted request; its errors are logged, never raised.
    * ``min_send_rate``/``min_receive_rate``: a ``MinDataRate`` below which a client reading the
      response or sending its body fires the token with ``ClientTooSlow`` (after the rate's
      grace period); the connection is closed (see ``_rates``). Off by default, and free when off.
    * ``max_buffer``: body bytes read ahead while watching for a disconnect before reading pauses
      until the app catches up (backpressure).
    * ``watch_delay``: how long after application code first observes the token the connection
      starts being watched (seconds; default 1 ms, ``0`` for at once, at most ``MAX_WATCH_DELAY``).
      Handlers that observe their token and finish sooner never pay for a watcher task; a
      disconnect inside that window is noticed when it ends. The watchlist holds every request
      that looked within the last ``watch_delay``, finished or not, hence the bound.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        timeout: float | str | None = None,
        policies: Mapping[str, float | TimeoutPolicy | None] | None = None,
        timeout_status: int = 504,
        deadline_headers: Sequence[str | DeadlineHeader] = (),
        enforce_after: float | None = None,
        shutdown: CancellationToken | None = None,
        on_abort: AbortHook | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        watch_delay: float = DEFAULT_WATCH_DELAY,
        min_send_rate: MinDataRate | None = None,
        min_receive_rate: MinDataRate | None = None,
    ) -> None:
        if not 0 <= watch_delay <= MAX_WATCH_DELAY:
            raise ValueError(
                f"watch_delay must be between 0 and {MAX_WATCH_DELAY:g} seconds, not "
                f"{watch_delay!r}: a disconnect inside it is noticed only when it ends"
            )
        self.app = app
        # Timeouts given as plain numbers answer with timeout_status; a TimeoutPolicy names its own.
        self.policies = {
            name: policy
            if isinstance(policy, TimeoutPolicy)
            else TimeoutPolicy(policy, timeout_status)
            for name, policy in (policies or {}).items()
        }
        self.timeout_status = timeout_status
        self.default_policy, self.default_policy_name = resolve_policy(timeout, self.policies)
        self.deadline_headers = {
            header.name.encode("latin-1"): header
            for header in map(DeadlineHeader.of, deadline_headers)
        }
        self.enforce_after = enforce_after
        self.shutdown = shutdown
        self.on_abort = on_abort
        self.max_buffer = max_buffer
        self.watch_delay = watch_delay
        self.min_send_rate = min_send_rate
        self.min_receive_rate = min_receive_rate
        self.rates = min_send_rate is not None or min_receive_rate is not None
        self.lock = threading.Lock()  # shared by this middleware's request sources
        self.abort_log = AbortLog(logger)  # the abort line, visible without logging set up
        self._running: tuple[int, Loop, Watchlist | None] | None = None

    def running(self) -> tuple[int, Loop, Watchlist | None]:
        """This thread, its running loop and the loop's watchlist, found cheaply.

        On CPython 3.11 ``get_running_loop()`` makes a ``getpid()`` system call every time
        (3.12 dropped it), measured here at a fifth of this middleware's per-request cost. A loop
        found running in this thread before is the running loop while it still runs: two loops
        cannot run in one thread at once. (Moving a loop to another thread while this thread
        runs a new one would defeat it; asyncio allows that, nobody does it.) Under trio the
        loop is the run's ``TrioLoop``, found the same way once per run (``_loop``).
        """
        thread = threading.get_ident()
        cached = self._running
        if cached is not None and cached[0] == thread and cached[1].is_running():
            return cached
        loop = running_loop()
        watchlist = Watchlist(loop, self.watch_delay) if self.watch_delay > 0 else None
        cached = self._running = (thread, loop, watchlist)
        return cached

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if (kind != "http" and kind != "websocket") or _context.SCOPE_KEY in scope:
            await self.app(scope, receive, send)  # lifespan, or a second instance: pass through
            return
        # Everything this request needs is the one _Request object (its token source and its
        # channel) plus its token: the path every request takes, whether or not it looks.
        request = (_Request if kind == "http" else _WebSocket)(self, scope, receive, send)
        reset = _context.current.set(request)
        rates = None
        if self.rates and kind == "http":
            rates = RateWatch(request, send, self.min_send_rate, self.min_receive_rate, scope)
        try:
            try:
                if rates is not None:
                    await request.run_enforced(scope, rates.receive, rates.send)
                elif self.enforce_after is None:
                    await self.app(scope, request.receive, request.send)
                else:
                    await request.run_enforced(scope, request.receive, request.send)
            except BaseException as exc:
                if request._reason is None or not request.absorbs(exc):
                    raise
            finally:
                request.close()
                if rates is not None:
                    rates.close()
            if request._reason is not None:
                await request.finish_aborted(scope)
        finally:
            # The last tie from the token (which outlives the request) to the server's objects
            # (which keep the scope, which keeps the token): a reference cycle if left.
            request._send = _send_over
            _context.current.reset(reset)


class _Request(RequestChannel):
    """One request's token source, timer and channel: the ``RequestContext`` handlers reach."""

    __slots__ = ("_header_deadline", "_live_token", "_registration", "_status", "started_at")

    _options: RequestAbortedMiddleware  # the channel's options are the whole middleware

    def __init__(
        self, config: RequestAbortedMiddleware, scope: Scope, receive: Receive, send: Send
    ) -> None:
        RequestChannel.__init__(self, receive, send, config.running(), config.lock, config)
        self.started_at = time.monotonic()
        # Held strongly only while the request runs (close() drops it): a source that keeps
        # its token is a reference cycle.
        self._live_token: CancellationToken | None = CancellationToken(self)
        scope[_context.SCOPE_KEY] = self._live_token
        if scope["type"] == "http":
            self._unobserved = True  # the first look at the token starts the watching
        self._status = config.timeout_status
        self._header_deadline: float | None = None
        self._registration: Registration | None = None
        if config.deadline_headers:
            self._read_deadline_headers(scope)
        if config.default_policy.timeout is not None or self._header_deadline is not None:
            self._arm(config.default_policy, config.default_policy_name)
        shutdown = config.shutdown
        if shutdown is None and "state" in scope:
            lifetime = scope["state"].get(_context.LIFETIME_KEY)
            if lifetime is not None:
                shutdown = lifetime.grace_expired
        if shutdown is not None:
            self._registration = shutdown.register(self._shutting_down)
            self.make_interruptible()

    @property
    def token(self) -> CancellationToken:
        token = self._live_token
        return token if token is not None else CancellationToken(self)

    async def run_enforced(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app under ``enforce_after`` (if set): cooperative first, forced later."""
        if self._options.enforce_after is None:
            await self._options.app(scope, receive, send)
            return
        enforcer = TokenScope(self.token, delay=self._options.enforce_after)
        try:
            async with enforcer:
                await self._options.app(scope, receive, send)
        finally:
            if enforcer.cancelled_caught:
                logger.warning(
                    "%s %s ignored its cancelled token for %gs and was cancelled; "
                    "pass the token to the work it awaits",
                    scope.get("method", ""),
                    _route_name(scope),
                    self._options.enforce_after,
                )

    def close(self) -> None:
        """Stop watching, and drop what would tie the token to the server once the request is over.

        The token outlives the request (it is in the scope, maybe in a task the handler started)
        and refers to this object, so this object must not keep the token, nor the server's
        ``receive``/``send`` (whose owner keeps the scope): those would be reference cycles.
        ``send`` goes last, in the middleware, after an aborted request's final answer.
        """
        # Code that looks at the token after the request (a task it spawned, a test) must not
        # start a pump on a connection the server now owns, maybe on a loop already closed.
        self._unobserved = False
        self._live_token = None
        self._receive = _receive_over
        if self._disconnect is None:
            self._disconnect = _OVER  # a late receive() hears that the request is gone
        registration = self._registration
        if registration is not None:
            self._registration = None
            registration.unregister()
        if self._pump is not None:
            RequestChannel.close(self)
        if self._timer is not None or self._parents:
            CancellationTokenSource.close(self)

    def absorbs(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by the app after the token fired, is the abort's fallout."""
        return is_fallout(exc, self)

    async def finish_aborted(self, scope: Scope) -> None:
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
            body_unread=not self._body_done and _expects_body(scope),
            server_send=self._send,
            http_version=scope.get("http_version", "1.1"),
        )

    def _report(self, scope: Scope, reason: BaseException, status: int) -> None:
        """The one log line and the ``on_abort`` call, HTTP and WebSocket alike."""
        elapsed = time.monotonic() - self.started_at
        scope[FIRED_AT_KEY] = self._cancelled_at
        scope[STATUS_KEY] = status
        scope[STARTED_KEY] = self.started
        log_abort(scope, reason, status, elapsed, self._options.abort_log)
        hook = self._options.on_abort
        if hook is not None:
            try:
                hook(scope, reason, elapsed)
            except Exception:
                logger.exception("the on_abort hook raised")

    # -- timeouts ------------------------------------------------------------------------------

    def set_timeout(self, timeout: float | str | None) -> None:
        """Re-arm the request's timer for an endpoint's own timeout, from any thread."""
        policy, name = resolve_policy(timeout, self._options.policies)
        self.on_loop(self._arm, policy, name)

    def _arm(self, policy: TimeoutPolicy, name: str | None) -> None:
        deadline = None if policy.timeout is None else self.started_at + policy.timeout
        timeout, status = policy.timeout, policy.status_code
        default_status = self._options.timeout_status
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
        headers = self._options.deadline_headers
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


class _WebSocket(_Request):
    """A WebSocket's source and channel. The client closing is a WebSocket's normal end: the
    token fires with ``ClientDisconnected``, but nothing is logged, no hook is called and every
    exception the app raises (``WebSocketDisconnect`` first of all: FastAPI's tests, telemetry of
    close codes and the server's own logging rely on it) propagates as if we were not there, only
    our own ``OperationCancelled`` excepted. A timeout or a shutdown ends it as it ends an HTTP
    request: the app's next ``receive()`` hears a disconnect (code 1001), its fallout is absorbed,
    the socket is closed with 1001 "going away" (refused with 403 before it was accepted), and it
    gets the log line and the ``on_abort`` call."""

    __slots__ = ()

    given_up: ClassVar[Message] = {"type": "websocket.disconnect", "code": GOING_AWAY}

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


_OVER: Final[Message] = {"type": "http.disconnect"}


async def _receive_over() -> Message:
    raise RuntimeError("the request is over: its receive() is closed")


async def _send_over(message: Message) -> None:
    raise RuntimeError("the request is over: its send() is closed")


def _route_name(scope: Scope) -> str:
    endpoint = scope.get("endpoint")
    name = getattr(endpoint, "__qualname__", None)
    return f"{scope.get('path', '')} ({name})" if name else str(scope.get("path", ""))
