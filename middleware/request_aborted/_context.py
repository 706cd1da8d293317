"""Where application code finds the current request's token.

The middleware publishes the token in three places that suit different callers: the ASGI scope
(``request_aborted(request)``, for code holding a ``Request``), a ``ContextVar``
(``current_token()``, for code deep in a call stack, in tasks spawned by the handler and in sync
endpoints running in the thread pool), and typed parameters (see ``_binding``). Reaching for any of
them without the middleware is a set-up mistake, so it fails loudly and says how to fix it.
"""

from __future__ import annotations

import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Final, Protocol

from starlette.requests import HTTPConnection

from ._current import current
from ._token import CancellationToken

if TYPE_CHECKING:
    from starlette.types import Scope

__all__ = [
    "NOT_INSTALLED",
    "SCOPE_KEY",
    "RequestContext",
    "current_request",
    "current_token",
    "request_aborted",
    "scope_token",
]

SCOPE_KEY: Final = "request_aborted.token"
# Kept in the lifespan state, so the server copies it into every request's scope["state"].
LIFETIME_KEY: Final = "request_aborted.lifetime"
NOT_INSTALLED: Final = (
    "RequestAbortedMiddleware is not installed: add it with "
    "app.add_middleware(RequestAbortedMiddleware), outermost, before anything that reads the body"
)
NO_REQUEST: Final = (
    "no request is being handled here: current_token() works while RequestAbortedMiddleware"
    " handles a request (in the handler, in tasks it starts, in sync endpoints), not at import"
    " time, at startup or in a background service; take the token as a parameter there"
)
IN_A_THREAD: Final = (
    "(In a thread: a sync endpoint also gets here when RequestAbortedMiddleware is not installed;"
    " a thread you start yourself needs contextvars.copy_context().run to see the request.)"
)
OUTSIDE_MIDDLEWARE: Final = (
    "this request is handled by RequestAbortedMiddleware, but this code runs outside the part it"
    " wraps (a middleware added outside it, or an exception handler of one): move"
    " RequestAbortedMiddleware outermost, or take the token with request_aborted(request)"
)


class RequestContext(Protocol):
    """What the middleware publishes per request: the token, and the knob timeouts turn."""

    @property
    def token(self) -> CancellationToken: ...

    def set_timeout(self, timeout: float | str | None) -> None: ...


def current_request() -> RequestContext:
    """Return the request being handled in this context, or fail saying which mistake it is."""
    try:
        return current.get()
    except LookupError:
        raise RuntimeError(_why_no_request()) from None


def _why_no_request() -> str:
    """Outside any request, or inside one the middleware does not handle: they need other fixes.

    The error path only: it looks for an ASGI ``scope`` of an HTTP or WebSocket request among the
    callers' local variables (every ASGI app and middleware has one), which finds the request an
    ``async`` handler runs in. A worker thread's stack holds none, so a sync endpoint there is
    told both possibilities.
    """
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        scope = frame.f_locals.get("scope")
        if isinstance(scope, dict) and scope.get("type") in ("http", "websocket"):
            if SCOPE_KEY not in scope:
                return NOT_INSTALLED
            return OUTSIDE_MIDDLEWARE
        frame = frame.f_back
    if threading.current_thread() is not threading.main_thread():
        return f"{NO_REQUEST} {IN_A_THREAD}"
    return NO_REQUEST


def current_token() -> CancellationToken:
    """Return the token of the request being handled in this context.

    Works in the handler, in tasks it spawns and in sync endpoints running in the thread pool.
    Raises ``RuntimeError`` outside a request handled by ``RequestAbortedMiddleware``, saying
    whether no request is being handled at all or the middleware is missing; code that also runs
    outside requests should take the token as a parameter instead.
    """
    return current_request().token


def request_aborted(connection: HTTPConnection) -> CancellationToken:
    """Return the token of ``connection`` (a Starlette ``Request`` or ``WebSocket``)."""
    return scope_token(connection.scope)


def scope_token(scope: Scope) -> CancellationToken:
    """Return the token the middleware stored in an ASGI scope."""
    try:
        token: CancellationToken = scope[SCOPE_KEY]
    except KeyError:
        raise RuntimeError(NOT_INSTALLED) from None
    return token
