"""Startup and shutdown: the engine, the seed, the upstream and the HTTP client, in that order.

Everything the handlers use is created here and closed here, in reverse order, after the last
request has finished: the HTTP client before the upstream it talks to, the engine last. Startup
work (schema, first-start seed) takes the lifetime's ``stopping`` token, so Ctrl-C during a long
first seed stops it instead of waiting it out.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from repositories import Database, RecommendationsClient, UploadStore
from request_aborted import ApplicationLifetime, CancellationToken
from request_aborted.httpx import cancellable_client
from services import (
    DataSyncService,
    HealthService,
    OrdersService,
    ReportsService,
    SearchService,
    UploadsService,
)

from .container import Services
from .debug import INTERNALS_STATE, DebugEvents, Internals
from .engine_events import listening
from .live_stats import LiveStats
from .metrics import DemoMetrics
from .seed import default_rows, seed
from .settings import Settings
from .upstream import EmbeddedServer, create_upstream

__all__ = ["demo_lifespan"]

logger = logging.getLogger("app")


def demo_lifespan(
    settings: Settings,
    lifetime: ApplicationLifetime,
    metrics: DemoMetrics,
    live: LiveStats,
    debug: DebugEvents | None,
) -> Any:
    """The application's own lifespan, for ``lifetime.lifespan(...)`` to wrap."""

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[dict[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            database = Database(
                settings.database_url,
                pool_size=settings.db_pool_size,
                pool_timeout=settings.db_pool_timeout,
            )
            stack.push_async_callback(database.dispose)
            # The instruments listen on this engine only, and stop before it is disposed.
            engine = database.engine.sync_engine
            stack.enter_context(listening(engine, live.statement_listeners()))
            if debug is not None:
                stack.enter_context(listening(engine, debug.statement_listeners()))
            await _prepare(database, settings, lifetime.stopping)

            upstream_url = settings.recommender_url
            if upstream_url is None:
                upstream = create_upstream(settings.recommender_latency_ms)
                embedded = await stack.enter_async_context(EmbeddedServer(upstream))
                upstream_url = embedded.url
                logger.info("recommendations upstream started in-process at %s", upstream_url)
            transport = _http_transport()
            http = await stack.enter_async_context(
                _http_client(upstream_url, transport, live.outbound_hooks())
            )
            recommendations = RecommendationsClient(http)

            reports = ReportsService(database)
            lifetime.add_service(
                DataSyncService(reports, database, interval=settings.data_sync_interval)
            )
            state: dict[str, Any] = {
                "services": Services(
                    search=SearchService(
                        database,
                        recommendations,
                        recommendations_timeout=settings.recommendations_timeout,
                    ),
                    reports=reports,
                    orders=OrdersService(database, commit_grace=settings.commit_grace),
                    uploads=UploadsService(
                        UploadStore(settings.upload_dir), max_bytes=settings.upload_max_bytes
                    ),
                    health=HealthService(database, recommendations),
                    metrics=metrics,
                    live=live,
                )
            }
            if debug is not None:
                state[INTERNALS_STATE] = Internals(engine, [transport])
            yield state

    return lifespan


async def _prepare(database: Database, settings: Settings, token: CancellationToken) -> None:
    """Create the tables and, on a first start, seed them."""
    await database.create_schema(token)
    if not await database.is_empty(token):
        return
    rows = settings.seed_rows if settings.seed_rows is not None else default_rows(database.dialect)
    logger.info("empty database: seeding %s sales rows (first start only)...", f"{rows:,}")
    started = time.monotonic()

    def tenth(done: int, total: int) -> None:
        logger.info("seeding: %d%% (%.0f s)", 100 * done // total, time.monotonic() - started)

    await seed(database, rows, token, on_tenth=tenth)
    logger.info("seeded in %.1f s", time.monotonic() - started)


def _http_transport() -> httpx.AsyncHTTPTransport:
    """The one connection pool of the process (made here so ``/debug/internals`` can show it)."""
    return httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20)
    )


def _http_client(
    base_url: str, transport: httpx.AsyncHTTPTransport, event_hooks: dict[str, list[Any]]
) -> httpx.AsyncClient:
    """One client (one connection pool) for the whole process, closed at shutdown.

    ``cancellable_client`` makes each request stop when the token in its extensions fires, and
    shortens httpx's timeouts to the token's remaining budget. ``event_hooks`` are the live
    panel's (which calls a cancellation stopped).
    """
    return cancellable_client(
        base_url=base_url,
        timeout=httpx.Timeout(10.0, connect=2.0),
        transport=transport,
        event_hooks=event_hooks,
    )
