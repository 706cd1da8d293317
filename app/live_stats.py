"""The search page's live panel (``GET /stats``): what the aborts stopped, and what they saved.

Requests started, completed and aborted by reason, what the aborts cancelled (SQL statements,
outbound calls) and the database time the aborted requests would have cost. ``LiveStatsMiddleware``
opens one small account per request and publishes it in a ContextVar; what happens below charges
it through hooks the lifespan installs on the app's own engine and HTTP client
(``statement_listeners()``, ``outbound_hooks()``) and removes at shutdown. Aborts arrive through
the middleware's ``on_abort`` hook, like the Prometheus counters. None of it looks at the token:
that would switch on the disconnect watching it reports on.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import httpx
from sqlalchemy.engine import Connection, ExceptionContext
from starlette.types import ASGIApp, Receive, Scope, Send

from request_aborted import OperationCancelled
from request_aborted.prometheus import route_of  # one route label for both instruments

from .engine_events import Listeners

__all__ = ["LiveStats", "LiveStatsMiddleware"]

ACCOUNT_KEY: Final = "demo.live_stats"  # the request's _Account, in its scope, for on_abort
_STARTED_AT: Final = "demo.live_stats.statement_started"  # in Connection.info


@dataclass
class _Account:
    """One request, as the live panel sees it."""

    db_seconds: float = 0.0
    failed_statements: int = 0
    outbound_pending: int = 0  # outbound calls sent and not answered (yet)
    outbound_cancelled: bool = False
    counted_as: str | None = None  # "completed" or "failed", until an abort says otherwise


_account: ContextVar[_Account | None] = ContextVar("demo.live_stats", default=None)


@dataclass
class _RouteTotals:
    completed: int = 0
    completed_db_seconds: float = 0.0
    aborted: int = 0
    aborted_db_seconds: float = 0.0


class LiveStats:
    """Totals since the app started, for the search page's panel; see the module docstring.

    Requests to the page itself (``/``, ``/static/...``, ``/stats``) and to ``/metrics`` and
    ``/debug/...`` are not counted: the panel polls twice a second and would mostly count itself.
    """

    QUIET_PATHS: Final = ("/", "/stats", "/metrics", "/favicon.ico", "/about")
    QUIET_PREFIXES: Final = ("/static/", "/debug/")

    def __init__(self) -> None:
        self.started = 0
        self.completed = 0
        self.failed = 0
        self.aborted: collections.Counter[str] = collections.Counter()
        self.statements_cancelled = 0
        self.outbound_cancelled = 0
        self._routes: collections.defaultdict[str, _RouteTotals] = collections.defaultdict(
            _RouteTotals
        )

    def counts(self, path: str) -> bool:
        return path not in self.QUIET_PATHS and not path.startswith(self.QUIET_PREFIXES)

    def finished(self, scope: Scope, account: _Account, error: BaseException | None) -> None:
        """The app returned (or raised); an abort, reported next by ``on_abort``, overrides this."""
        if isinstance(error, OperationCancelled | asyncio.CancelledError):
            # The token fired: on_abort follows and counts the request. (A cancellation that
            # escapes without the request's token firing is a bug the server logs as a 500.)
            account.outbound_cancelled = account.outbound_pending > 0
            return
        totals = self._routes[route_of(scope)]
        if error is None:
            account.counted_as = "completed"
            self.completed += 1
            totals.completed += 1
            totals.completed_db_seconds += account.db_seconds
        else:
            account.counted_as = "failed"
            self.failed += 1

    def on_abort(self, scope: Scope, reason: BaseException) -> None:
        """The request's token fired (the middleware's ``on_abort``, after ``finished``)."""
        account: _Account | None = scope.get(ACCOUNT_KEY)
        if account is None:
            return  # a quiet path
        totals = self._routes[route_of(scope)]
        if account.counted_as == "completed":  # the handler returned, but the client had left
            self.completed -= 1
            totals.completed -= 1
            totals.completed_db_seconds -= account.db_seconds
        elif account.counted_as == "failed":
            self.failed -= 1
        self.aborted[type(reason).__name__] += 1
        totals.aborted += 1
        totals.aborted_db_seconds += account.db_seconds
        self.statements_cancelled += account.failed_statements
        self.outbound_cancelled += account.outbound_cancelled

    def snapshot(self) -> dict[str, Any]:
        """The panel's numbers, as ``GET /stats`` sends them."""
        aborted = sum(self.aborted.values())
        estimated = [t for t in self._routes.values() if t.aborted and t.completed]
        # An aborted request would have cost what a completed one on the same route costs on
        # average; what it used before it stopped was not saved. No estimate without completions.
        would_cost = sum(t.aborted * t.completed_db_seconds / t.completed for t in estimated)
        used = sum(t.aborted_db_seconds for t in estimated)
        return {
            "requests": {
                "started": self.started,
                "completed": self.completed,
                "failed": self.failed,
                "aborted": aborted,
                "in_flight": max(0, self.started - self.completed - self.failed - aborted),
                "aborted_by_reason": dict(self.aborted.most_common()),
            },
            "cancelled": {
                "db_statements": self.statements_cancelled,
                "outbound_calls": self.outbound_cancelled,
            },
            "db_time_ms": {
                "aborted_would_have_cost": _ms(would_cost) if estimated else None,
                "aborted_used": _ms(used) if estimated else None,
                "saved": _ms(max(0.0, would_cost - used)) if estimated else None,
            },
        }

    @staticmethod
    def statement_listeners() -> Listeners:
        """Engine events that charge each statement's time to the request that ran it."""
        return {
            "before_cursor_execute": _statement_started,
            "after_cursor_execute": _statement_finished,
            "handle_error": _statement_failed,
        }

    @staticmethod
    def outbound_hooks() -> dict[str, list[Callable[[Any], Awaitable[None]]]]:
        """httpx ``event_hooks``: a call sent and not answered when the token fired was stopped."""
        return {"request": [_outbound_sent], "response": [_outbound_answered]}


class LiveStatsMiddleware:
    """Opens the live panel's account of each request; sits inside ``RequestAbortedMiddleware``."""

    def __init__(self, app: ASGIApp, *, stats: LiveStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.stats.counts(scope["path"]):
            await self.app(scope, receive, send)
            return
        account = scope[ACCOUNT_KEY] = _Account()
        self.stats.started += 1
        reset = _account.set(account)
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            self.stats.finished(scope, account, exc)
            raise
        else:
            self.stats.finished(scope, account, None)
        finally:
            _account.reset(reset)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# The hooks below do nothing outside a counted request (a quiet path, the background refresh).


def _statement_started(conn: Connection, *_: object) -> None:
    if _account.get() is not None:
        conn.info[_STARTED_AT] = time.perf_counter()


def _statement_finished(conn: Connection, *_: object) -> None:
    account, started_at = _account.get(), conn.info.pop(_STARTED_AT, None)
    if account is not None and started_at is not None:
        account.db_seconds += time.perf_counter() - started_at


def _statement_failed(context: ExceptionContext) -> None:
    # In an aborted request, a failed statement is one the token stopped (interrupted on the
    # server, or refused before it was sent); on_abort counts them as cancelled.
    account, conn = _account.get(), context.connection
    if account is None or conn is None:
        return
    started_at = conn.info.pop(_STARTED_AT, None)
    if started_at is not None:
        account.db_seconds += time.perf_counter() - started_at
    account.failed_statements += 1


async def _outbound_sent(_request: httpx.Request) -> None:
    account = _account.get()
    if account is not None:
        account.outbound_pending += 1


async def _outbound_answered(_response: httpx.Response) -> None:
    account = _account.get()
    if account is not None:
        account.outbound_pending -= 1
