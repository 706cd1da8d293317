"""``RequestAbortedMiddleware``: ASP.NET Core's ``HttpContext.RequestAborted`` for ASGI.

Pure ASGI, and cheap where the token is not used: per request one object (``_request``: the token
source, the connection's state and the request's timer in one), its token and one context-variable
set, and nothing left behind for the cyclic garbage collector. Watching the connection, the only
costly part, starts only for requests still running a ``watch_delay`` or two after application
code first observed the token (see ``_watcher``). Put it outermost, before anything that reads the
body, so it owns ``receive`` and its token is bound before routing and exception handlers run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from threading import get_ident
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from ._context import SCOPE_KEY
from ._current import current
from ._deadline import DeadlineHeader
from ._log import AbortLog
from ._loop import Loop, running_loop
from ._rates import MinDataRate, RateWatch
from ._request import HttpRequest, WebSocketRequest
from ._timeouts import TimeoutPolicy, resolve_policy
from ._token import CancellationToken
from ._watcher import Watchlist

__all__ = ["AbortHook", "RequestAbortedMiddleware"]

logger = logging.getLogger("request_aborted")

AbortHook = Callable[[Scope, BaseException, float], object]
"""Called once per aborted request with ``(scope, reason, elapsed_seconds)``.

It runs after the handler returned and before the edge's 504/503 is sent (so a tracing span that
wraps the middleware is still open); the scope then holds ``request_aborted.fired_at``,
``request_aborted.status`` and ``request_aborted.response_started``."""

DEFAULT_MAX_BUFFER: Final = 1 << 20
DEFAULT_WATCH_DELAY: Final = 0.001  # see the class docstring
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
      starts being watched: between one and two ``watch_delay`` (seconds; default 1 ms, ``0`` for
      at once, at most ``MAX_WATCH_DELAY``). Handlers that observe their token and finish sooner
      never pay for a watcher task; a disconnect inside that window is noticed when it ends. The
      watchlist holds every request that looked within the last two ``watch_delay``, finished or
      not, hence the bound.
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
        # What every request asks of the settings, answered once: run the app, nothing else
        # around it (no rate watch, no enforcement); and a request that arms nothing of its own
        # (no default timeout, no deadline headers, no shutdown token given).
        self.plain = not self.rates and enforce_after is None
        self.arms_nothing = (
            self.default_policy.timeout is None and not self.deadline_headers and shutdown is None
        )

    def running(self) -> tuple[int, Loop, Watchlist | None]:
        """This thread, its running loop and the loop's watchlist, found and remembered.

        On CPython 3.11 ``get_running_loop()`` makes a ``getpid()`` system call every time
        (3.12 dropped it), measured here at a fifth of this middleware's per-request cost. A loop
        found running in this thread before is the running loop while it still runs: two loops
        cannot run in one thread at once. (Moving a loop to another thread while this thread
        runs a new one would defeat it; asyncio allows that, nobody does it.) So ``__call__``
        checks what was remembered (is_current() with the thread known, spelled out: every
        request asks) and calls this only when that fails. Under trio the loop is the run's
        ``TrioLoop``, found the same way once per run (``_loop``).
        """
        loop = running_loop()
        watchlist = Watchlist(loop, self.watch_delay) if self.watch_delay > 0 else None
        found = self._running = (get_ident(), loop, watchlist)
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if (kind != "http" and kind != "websocket") or SCOPE_KEY in scope:
            await self.app(scope, receive, send)  # lifespan, or a second instance: pass through
            return
        # Everything this request needs is the one request object (its token source and its
        # connection) plus its token: the path every request takes, whether or not it looks.
        running = self._running
        if running is None or running[0] != get_ident() or not running[1].is_running():
            running = self.running()
        request = (HttpRequest if kind == "http" else WebSocketRequest)(
            self, running, scope, receive, send
        )
        reset = current.set(request)
        fired = True  # until end() says otherwise (it detaches a request whose token did not fire)
        try:
            try:
                if self.plain:
                    await self.app(scope, request.receive, request.send)
                else:
                    await self._run_guarded(request, scope, send)
            except BaseException as exc:
                if not request.is_cancellation_requested or not request.absorbs(exc):
                    raise
            finally:
                fired = request.end()
            if fired:
                await request.finish_aborted(scope)
        finally:
            if fired:
                request.detach()
            current.reset(reset)

    async def _run_guarded(self, request: HttpRequest, scope: Scope, send: Send) -> None:
        """Run the app under ``enforce_after`` and the data-rate watch, where they are set."""
        if not self.rates or scope["type"] != "http":
            await request.run_enforced(scope, request.receive, request.send)
            return
        rates = RateWatch(request, send, self.min_send_rate, self.min_receive_rate, scope)
        try:
            await request.run_enforced(scope, rates.receive, rates.send)
        finally:
            rates.close()
