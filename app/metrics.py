"""Prometheus metrics: the library's abort hook and a few counters of the demo's own.

Each app gets its own registry, so building two apps in one process (tests do) cannot trip over
duplicate metric names, and ``/metrics`` shows exactly this app's numbers.

``LiveStats`` is the search page's panel (``GET /stats``): requests started, completed and
aborted by reason, what the aborts cancelled (SQL statements, outbound calls) and the database
time the aborted requests would have cost. ``LiveStatsMiddleware`` keeps one small account per
request; SQL statements are timed by engine events and charged to the account of the request
that ran them, found through a ContextVar, the way ``app.debug`` attributes its events. Like
``app.debug``, none of it looks at the token: that would switch on the disconnect watching it
reports on. Aborts arrive through the same ``on_abort`` hook as the Prometheus counters.
"""

from __future__ import annotations

import asyncio
import collections
import time
import traceback
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from request_aborted import OperationCancelled
from request_aborted.prometheus import PrometheusAbortHook

__all__ = ["DemoMetrics", "LiveStats", "LiveStatsMiddleware"]

ACCOUNT_KEY: Final = "demo.live_stats"  # the request's _Account, in its scope, for on_abort
_STARTED_AT: Final = "demo.live_stats.statement_started"  # in Connection.info


class DemoMetrics:
    """The registry, the ``on_abort`` hook wired into the middleware, and the demo's counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.prometheus = PrometheusAbortHook(registry=self.registry, namespace="demo")
        self.live = LiveStats()
        self.reports = Counter(
            "reports_generated",
            "Reports answered in full.",
            ["report"],
            namespace="demo",
            registry=self.registry,
        )
        self.export_rows = Counter(
            "export_rows",
            "Rows sent in CSV exports.",
            ["report"],
            namespace="demo",
            registry=self.registry,
        )
        self.orders = Counter(
            "orders_placed", "Orders committed.", namespace="demo", registry=self.registry
        )
        self.upload_bytes = Counter(
            "upload_bytes", "Bytes of finished uploads.", namespace="demo", registry=self.registry
        )
        self.recommendation_fallbacks = Counter(
            "recommendation_fallbacks",
            "Searches answered without recommendations, by why.",
            ["reason"],
            namespace="demo",
            registry=self.registry,
        )

    def abort_hook(self, scope: Scope, reason: BaseException, elapsed: float) -> None:
        """The ``on_abort`` hook: the Prometheus counters and the live panel."""
        self.prometheus(scope, reason, elapsed)
        self.live.on_abort(scope, reason, elapsed)

    async def endpoint(self, request: Request) -> Response:
        """``GET /metrics`` in the Prometheus text format."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


@dataclass
class _Account:
    """One request, as the live panel sees it."""

    db_seconds: float = 0.0
    failed_statements: int = 0
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
        _time_statements()

    def counts(self, path: str) -> bool:
        return path not in self.QUIET_PATHS and not path.startswith(self.QUIET_PREFIXES)

    def finished(self, scope: Scope, account: _Account, error: BaseException | None) -> None:
        """The app returned (or raised); an abort, reported next by ``on_abort``, overrides this."""
        if isinstance(error, OperationCancelled | asyncio.CancelledError):
            # The token fired: on_abort follows and counts the request. (A cancellation that
            # escapes without the request's token firing is a bug the server logs as a 500.)
            account.outbound_cancelled = _surfaced_through_httpx(error)
            return
        totals = self._routes[_route(scope)]
        if error is None:
            account.counted_as = "completed"
            self.completed += 1
            totals.completed += 1
            totals.completed_db_seconds += account.db_seconds
        else:
            account.counted_as = "failed"
            self.failed += 1

    def on_abort(self, scope: Scope, reason: BaseException, elapsed: float) -> None:
        account: _Account | None = scope.get(ACCOUNT_KEY)
        if account is None:
            return  # a quiet path
        totals = self._routes[_route(scope)]
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


def _route(scope: Scope) -> str:
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"


def _surfaced_through_httpx(error: BaseException) -> bool:
    """Whether the cancellation stopped an outbound call: it was raised inside httpx's stack.

    The demo's HTTP client is built by the lifespan, out of this module's reach; where the
    cancellation came from says which kind of work it stopped without a hook in the client.
    """
    for frame, _line in traceback.walk_tb(error.__traceback__):
        module = str(frame.f_globals.get("__name__", ""))
        if module == "httpx" or module.startswith("httpx."):
            return True
    return False


# SQL statements, charged to the request that runs them. The listeners are registered once per
# process on the Engine class (so on every engine, including ones created later) and do nothing
# outside a counted request: several apps in one process keep apart, each request has its account.


def _time_statements() -> None:
    if event.contains(Engine, "before_cursor_execute", _statement_started):
        return
    event.listen(Engine, "before_cursor_execute", _statement_started)
    event.listen(Engine, "after_cursor_execute", _statement_finished)
    event.listen(Engine, "handle_error", _statement_failed)


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
