"""``RequestAbortedMiddleware``: ASP.NET Core's ``HttpContext.RequestAborted`` for ASGI.

Pure ASGI, and cheap where the token is not used: per request one source, one channel and one
context-variable set. Watching the connection, the only costly part, starts the first time
application code observes the token (see ``_channel``). Put it outermost, before anything that reads
the body, so it owns ``receive`` and its token is bound before routing and exception handlers run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from . import _context
from ._channel import RequestChannel
from ._deadline import DeadlineHeader
from ._edge import end_response, is_fallout, log_abort, status_for
from ._exceptions import RequestTimedOut, ServerShuttingDown
from ._loop import call_in_loop
from ._scope import TokenScope
from ._timeouts import TimeoutPolicy, resolve_policy
from ._token import CancellationToken, CancellationTokenSource, Registration

__all__ = ["AbortHook", "RequestAbortedMiddleware"]

logger = logging.getLogger("request_aborted")

AbortHook = Callable[[Scope, BaseException, float], object]
"""Called once per aborted request with ``(scope, reason, elapsed_seconds)``."""

FIRED_AT_KEY: Final = "request_aborted.fired_at"  # for on_abort hooks: when the token fired
DEFAULT_MAX_BUFFER: Final = 1 << 20
DEFAULT_WATCH_DELAY: Final = 0.0


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
    * ``max_buffer``: body bytes read ahead while watching for a disconnect before reading pauses
      until the app catches up (backpressure).
    * ``watch_delay``: how long after application code first observes the token the connection
      starts being watched (seconds; default 0, at once). With a few milliseconds, handlers that
      observe their token but finish sooner never pay for a watcher task; a disconnect inside
      that window is noticed when it ends.
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
    ) -> None:
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if (kind != "http" and kind != "websocket") or _context.SCOPE_KEY in scope:
            await self.app(scope, receive, send)  # lifespan, or a second instance: pass through
            return
        request = _Request(self, scope, receive, send)
        reset = _context.current.set(request)
        try:
            await request.run()
        finally:
            _context.current.reset(reset)


class _Request:
    """One request's token, timer and channel: the ``RequestContext`` handlers reach."""

    __slots__ = (
        "_header_deadline",
        "_registration",
        "_status",
        "channel",
        "config",
        "scope",
        "source",
        "started_at",
        "token",
    )

    def __init__(
        self, config: RequestAbortedMiddleware, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.config = config
        self.scope = scope
        self.started_at = time.monotonic()
        self.source = source = CancellationTokenSource()
        self.token = token = source.token
        loop = asyncio.get_running_loop()
        self.channel = channel = RequestChannel(
            receive, send, source, loop, config.max_buffer, config.watch_delay
        )
        if scope["type"] == "http":
            source._observer = channel.observed
        self._status = config.timeout_status
        self._header_deadline: float | None = None
        self._registration: Registration | None = None
        scope[_context.SCOPE_KEY] = token
        if config.deadline_headers:
            self._read_deadline_headers()
        if config.default_policy.timeout is not None or self._header_deadline is not None:
            self._arm(config.default_policy, config.default_policy_name)
        shutdown = config.shutdown
        if shutdown is None and "state" in scope:
            lifetime = scope["state"].get(_context.LIFETIME_KEY)
            if lifetime is not None:
                shutdown = lifetime.grace_expired
        if shutdown is not None:
            self._registration = shutdown.register(self._shutting_down)
            channel.make_interruptible()

    async def run(self) -> None:
        config, channel, source = self.config, self.channel, self.source
        app = config.app
        enforcer = None
        try:
            if config.enforce_after is None:
                await app(self.scope, channel.receive, channel.send)
            else:
                enforcer = TokenScope(self.token, delay=config.enforce_after)
                async with enforcer:
                    await app(self.scope, channel.receive, channel.send)
        except BaseException as exc:
            reason = source._reason
            if reason is None or not is_fallout(exc):
                raise
            if enforcer is not None and enforcer.cancelled_caught:
                logger.warning(
                    "%s %s ignored its cancelled token for %gs and was cancelled; "
                    "pass the token to the work it awaits",
                    self.scope.get("method", ""),
                    _route_name(self.scope),
                    config.enforce_after,
                )
        finally:
            # Code that looks at the token after the request (a task it spawned, a test) must not
            # start a pump on a connection the server now owns, maybe on a loop already closed.
            source._observer = None
            registration, self._registration = self._registration, None
            if registration is not None:
                registration.unregister()
            channel.close()
            if source._timer is not None or source._parents:
                source.close()
        reason = source._reason
        if reason is not None and self.scope["type"] == "http":
            await self._finish_aborted(reason)

    async def _finish_aborted(self, reason: BaseException) -> None:
        channel = self.channel
        status = status_for(reason, self._status)
        await end_response(
            channel.send, reason, status, started=channel.started, completed=channel.completed
        )
        elapsed = time.monotonic() - self.started_at
        self.scope[FIRED_AT_KEY] = self.source.cancelled_at
        log_abort(self.scope, reason, status, elapsed)
        hook = self.config.on_abort
        if hook is not None:
            try:
                hook(self.scope, reason, elapsed)
            except Exception:
                logger.exception("the on_abort hook raised")

    # -- timeouts ------------------------------------------------------------------------------

    def set_timeout(self, timeout: float | str | None) -> None:
        """Re-arm the request's timer for an endpoint's own timeout, from any thread."""
        policy, name = resolve_policy(timeout, self.config.policies)
        loop = self.channel._loop
        call_in_loop(loop, self._arm, policy, name)

    def _arm(self, policy: TimeoutPolicy, name: str | None) -> None:
        deadline = None if policy.timeout is None else self.started_at + policy.timeout
        timeout, status = policy.timeout, policy.status_code
        if name is None:  # a plain number, not a named policy
            status = self.config.timeout_status
        header = self._header_deadline
        if header is not None and (deadline is None or header < deadline):
            deadline, timeout, status = header, header - self.started_at, self.config.timeout_status
            name = "deadline-header"
        self._status = status
        if deadline is None:
            self.source.cancel_after(None)
        elif not self.channel.completed:
            reason = RequestTimedOut(timeout, name)
            self.source.cancel_after(deadline - time.monotonic(), reason)
            self.channel.make_interruptible()

    def _read_deadline_headers(self) -> None:
        headers = self.config.deadline_headers
        for name, value in self.scope.get("headers", ()):
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
        loop = self.channel._loop
        call_in_loop(loop, self.channel.fire, shutdown)


def _route_name(scope: Scope) -> str:
    endpoint = scope.get("endpoint")
    name = getattr(endpoint, "__qualname__", None)
    return f"{scope.get('path', '')} ({name})" if name else str(scope.get("path", ""))
