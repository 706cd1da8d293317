"""The composition root: ``uvicorn app.main:app`` (or ``scripts/demo``) starts the demo.

The middleware stack, outermost first:

1. ``RequestAbortedMiddleware`` - owns ``receive``, gives every request its token, enforces
   ``REQUEST_TIMEOUT`` (and the ``reports``/``transfers`` policies the routes ask for) and the
   minimum data rates (``MIN_SEND_RATE``/``MIN_RECEIVE_RATE``), and turns a fired token into one
   log line and a 499/504/503/408. Outermost, so it sees the request before
   anything reads its body.
2. ``LiveStatsMiddleware`` - counts requests for the search page's live panel (``GET /stats``).
3. ``DebugMiddleware`` - only with ``DEMO_DEBUG=1``: records each request (``app.debug``).
4. Starlette's own error middleware, with the problem+json handlers of ``app.problems``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import Scope

from request_aborted import (
    DEFAULT_DEADLINE_HEADER,
    ApplicationLifetime,
    MinDataRate,
    RequestAbortedMiddleware,
)

from .debug import DebugEvents, DebugMiddleware
from .lifespan import demo_lifespan
from .live_stats import LiveStats, LiveStatsMiddleware
from .logs import configure_logging
from .metrics import DemoMetrics
from .problems import EXCEPTION_HANDLERS
from .routes import build_routes
from .routes.page import page_routes
from .settings import Settings

__all__ = ["app", "create_app"]


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the demo from ``settings`` (by default, from the environment)."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    metrics = DemoMetrics()
    live = LiveStats()
    debug = DebugEvents() if settings.debug_events else None
    lifetime = ApplicationLifetime(grace=settings.shutdown_grace)

    def on_abort(scope: Scope, reason: BaseException, elapsed: float) -> None:
        metrics.abort_hook(scope, reason, elapsed)
        live.on_abort(scope, reason)
        if debug is not None:
            debug.on_abort(scope, reason, elapsed)

    middleware = [
        Middleware(
            RequestAbortedMiddleware,
            timeout=settings.request_timeout,
            policies={"reports": settings.report_timeout, "transfers": settings.transfer_timeout},
            # A caller's own budget (ours, from another service, or gRPC's) may shorten ours.
            deadline_headers=(DEFAULT_DEADLINE_HEADER, "grpc-timeout"),
            on_abort=on_abort,
            # A client that stops reading an export, or trickles an upload, is cut.
            min_send_rate=_rate(settings.min_send_rate),
            min_receive_rate=_rate(settings.min_receive_rate),
        ),
        Middleware(LiveStatsMiddleware, stats=live),
    ]
    if debug is not None:
        middleware.append(Middleware(DebugMiddleware, events=debug))
    return Starlette(
        routes=[
            *build_routes(
                honor_cancellation=settings.honor_cancellation, metrics=metrics, debug=debug
            ),
            *page_routes(),
        ],
        middleware=middleware,
        exception_handlers=dict(EXCEPTION_HANDLERS),
        # ApplicationLifetime.lifespan is typed as returning an AsyncIterator; it is in fact the
        # async context manager factory Starlette expects.
        lifespan=lifetime.lifespan(demo_lifespan(settings, lifetime, metrics, live, debug)),
    )


def _rate(setting: tuple[float, float] | None) -> MinDataRate | None:
    return None if setting is None else MinDataRate(*setting)


app = create_app()
