"""The record: requests and statements as they happened, in a bounded ring (see the package doc)."""

from __future__ import annotations

import time
from collections import Counter, deque
from contextvars import ContextVar
from typing import Any

from sqlalchemy.engine import ExceptionContext
from starlette.types import ASGIApp, Receive, Scope, Send

from ..engine_events import Listeners

__all__ = ["DEFAULT_CAPACITY", "DebugEvents", "DebugMiddleware"]

DEFAULT_CAPACITY = 20_000
"""Events kept (about 10 MB); a test reads what it needs long before the ring turns over."""

_path: ContextVar[str] = ContextVar("demo.debug.path", default="")
_client: ContextVar[int | None] = ContextVar("demo.debug.client", default=None)


class DebugEvents:
    """The last ``capacity`` events, and a running count of each kind."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.counts: Counter[str] = Counter()
        """``request.started``, ``request.finished``... and ``outcome:<name>``; never emptied."""

    def record(self, name: str, path: str | None = None, **details: Any) -> None:
        self.counts[name] += 1
        if "outcome" in details:
            self.counts[f"outcome:{details['outcome']}"] += 1
        self.events.append(
            {
                "event": name,
                "path": _path.get() if path is None else path,
                "client": _client.get(),
                "at": time.monotonic(),
                **details,
            }
        )

    def on_abort(self, scope: Scope, reason: BaseException, elapsed: float) -> None:
        """An ``on_abort`` hook: the request's token fired."""
        self.record(
            "request.aborted", scope.get("path", ""), reason=type(reason).__name__, elapsed=elapsed
        )

    def statement_listeners(self) -> Listeners:
        """Engine events recording every statement, with the path of the request that ran it."""

        def started(*_: object) -> None:
            self.record("sql.started")

        def finished(*_: object) -> None:
            self.record("sql.finished")

        def failed(context: ExceptionContext) -> None:
            self.record("sql.failed", error=type(context.original_exception).__name__)

        return {
            "before_cursor_execute": started,
            "after_cursor_execute": finished,
            "handle_error": failed,
        }

    def requests(self) -> dict[str, Any]:
        """Requests started, finished, in flight and aborted, and how each one ended."""
        started, finished = self.counts["request.started"], self.counts["request.finished"]
        return {
            "started": started,
            "finished": finished,
            "in_flight": started - finished,
            "aborted": self.counts["request.aborted"],
            "outcomes": {
                key.removeprefix("outcome:"): n
                for key, n in sorted(self.counts.items())
                if key.startswith("outcome:")
            },
        }


class DebugMiddleware:
    """Records the start and end of each HTTP request; sits inside ``RequestAbortedMiddleware``.

    Requests to ``/debug/...`` are not recorded: a test polling ``/debug/internals`` for "no
    request in flight" would otherwise always find its own.
    """

    def __init__(self, app: ASGIApp, *, events: DebugEvents) -> None:
        self.app = app
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/debug/"):
            await self.app(scope, receive, send)
            return
        reset = _path.set(scope["path"])
        client = scope.get("client")
        reset_client = _client.set(client[1] if client else None)  # the peer's port
        self.events.record("request.started")
        outcome = "returned"
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self.events.record("request.finished", outcome=outcome)
            _client.reset(reset_client)
            _path.reset(reset)
