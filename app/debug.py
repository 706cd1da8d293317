"""``DEMO_DEBUG=1``: a record of what the server did, for the end-to-end tests to read.

Off by default and never needed to run the demo. When on, it records, with ``time.monotonic()``
stamps (system-wide on Linux, so a test can compare them with its own clock):

* ``request.started`` / ``request.finished`` around every HTTP request,
* ``request.aborted`` from the middleware's ``on_abort`` hook, with the reason,
* ``sql.started`` / ``sql.finished`` / ``sql.failed`` for every statement, from engine events,

and serves them at ``GET /debug/events``. It never touches the request's token: observing the
token would switch on the disconnect watching it is meant to report on.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, ExceptionContext
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["DebugEvents", "DebugMiddleware"]

_path: ContextVar[str] = ContextVar("demo.debug.path", default="")


class DebugEvents:
    """An in-memory, append-only list of events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, name: str, path: str | None = None, **details: Any) -> None:
        self.events.append(
            {
                "event": name,
                "path": _path.get() if path is None else path,
                "at": time.monotonic(),
                **details,
            }
        )

    def on_abort(self, scope: Scope, reason: BaseException, elapsed: float) -> None:
        """An ``on_abort`` hook: the request's token fired."""
        self.record(
            "request.aborted", scope.get("path", ""), reason=type(reason).__name__, elapsed=elapsed
        )

    def watch(self, engine: Engine) -> None:
        """Record every statement ``engine`` runs, with the path of the request that ran it."""

        def started(*_: object) -> None:
            self.record("sql.started")

        def finished(*_: object) -> None:
            self.record("sql.finished")

        def failed(context: ExceptionContext) -> None:
            self.record("sql.failed", error=type(context.original_exception).__name__)

        event.listen(engine, "before_cursor_execute", started)
        event.listen(engine, "after_cursor_execute", finished)
        event.listen(engine, "handle_error", failed)

    async def endpoint(self, request: Request) -> JSONResponse:
        """``GET /debug/events``"""
        return JSONResponse(self.events)


class DebugMiddleware:
    """Records the start and end of each HTTP request; sits inside ``RequestAbortedMiddleware``."""

    def __init__(self, app: ASGIApp, *, events: DebugEvents) -> None:
        self.app = app
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/debug/"):
            await self.app(scope, receive, send)
            return
        reset = _path.set(scope["path"])
        self.events.record("request.started")
        outcome = "returned"
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self.events.record("request.finished", outcome=outcome)
            _path.reset(reset)
