"""Small helpers shared by the integration tests: running a coroutine, counting backends."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from request_aborted.sqlalchemy import install_cancellation
from tests._fixtures.pgbouncer import PgBouncer
from tests._fixtures.postgres import PostgresDatabase

T = TypeVar("T")

SLEEP_FOREVER = "SELECT pg_sleep(30)"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """The tests are plain functions: each one runs its own event loop."""
    return asyncio.run(coroutine)


class ConnectCounter:
    """Counts DBAPI connections the pool opens: each one is a backend forked on the server."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.count = 0
        event.listen(engine.sync_engine, "connect", self._on_connect)

    def _on_connect(self, *_: object) -> None:
        self.count += 1


def engine_for(url: str, **options: Any) -> AsyncEngine:
    engine = create_async_engine(url, **options)
    install_cancellation(engine)
    return engine


async def wait_until(
    check: Callable[[], Awaitable[bool]], within: float = 5.0, interval: float = 0.001
) -> float:
    """Poll ``check`` until true; return the seconds it took (fail the test after ``within``)."""
    start = time.perf_counter()
    while not await check():
        if time.perf_counter() - start > within:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)
    return time.perf_counter() - start


def pooler_connect_args(driver: str) -> dict[str, Any]:
    """What each driver needs behind PgBouncer 1.18 in transaction mode: no named prepared
    statement may outlive its transaction's server connection (docs/sqlalchemy.md, PgBouncer)."""
    if driver == "asyncpg":
        return {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__",
        }
    return {"prepare_threshold": None}


@dataclass(frozen=True)
class PgTarget:
    """One way to reach a test's database: a driver, and PgBouncer or not.

    ``db`` always talks to PostgreSQL directly, so what the server does is watched the same way
    whichever path the engine takes.
    """

    driver: str
    db: PostgresDatabase
    bouncer: PgBouncer | None = None

    @property
    def url(self) -> str:
        if self.bouncer is not None:
            return self.bouncer.url(self.db.name, self.driver)
        return self.db.server.url(self.db.name, self.driver)

    def engine(self, **options: Any) -> AsyncEngine:
        """An engine with the cancellation hooks, and the pooler settings where they belong."""
        if self.bouncer is not None:
            connect_args = options.setdefault("connect_args", {})
            connect_args.update(pooler_connect_args(self.driver))
        return engine_for(self.url, **options)

    def __str__(self) -> str:
        return self.driver + (" via pgbouncer" if self.bouncer else "")
