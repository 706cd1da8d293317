"""The engine, its pool, and the unit of work every service opens to reach the tables.

One ``Database`` per process, owned by the application's lifespan. It installs the cancellation
hooks on its engine at startup (``install_cancellation``), so the first aborted request does not
pay for them and every ``cancellable`` block below can stop its statement on the server.
``DATABASE_URL`` alone picks the driver (``postgresql+asyncpg``, ``postgresql+psycopg``,
``sqlite+aiosqlite``) and, with ``?pgbouncer=transaction``, the settings PgBouncer needs
(``pooling.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool, QueuePool

from request_aborted import CancellationToken
from request_aborted.sqlalchemy import cancellable, install_cancellation

from .errors import translate_unavailable
from .models import Base, Product
from .pooling import pooler_options
from .unit_of_work import UnitOfWork

__all__ = ["Database", "PoolStatus"]


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """What ``/healthz`` shows of the connection pool."""

    size: int
    checked_out: int
    overflow: int


class Database:
    """Owns the engine; ``unit_of_work()`` hands out one session's worth of repositories."""

    def __init__(self, url: str, *, pool_size: int = 5, pool_timeout: float = 30.0) -> None:
        options: dict[str, Any] = {
            "pool_size": pool_size,
            "max_overflow": pool_size,
            "pool_timeout": pool_timeout,
        }
        pooler = pooler_options(make_url(url))
        parsed = pooler.url
        if pooler.connect_args:
            options["connect_args"] = pooler.connect_args
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            # A writer waits for the lock instead of failing at once; WAL lets reports read
            # while an order commits.
            options["connect_args"] = {"timeout": 30}
        else:
            options["pool_pre_ping"] = True
        self.url = url
        self.dialect = parsed.get_backend_name()
        self.engine: AsyncEngine = create_async_engine(parsed, **options)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        install_cancellation(self.engine, side_connection=pooler.side_connection)
        # Health probes get a connection of their own: a pool drained by slow reports is busy,
        # not down, and a probe queued behind that work would report the database as down.
        self._probe: AsyncEngine = create_async_engine(
            parsed, poolclass=NullPool, connect_args=options.get("connect_args", {})
        )
        install_cancellation(self._probe, side_connection=pooler.side_connection)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """One session: what is not committed before the block ends is rolled back.

        Opening it does no I/O (the connection is checked out by the first statement), which is
        why it takes no token: every repository method does, and so does ``commit``. A database
        that cannot serve, whichever statement (or the closing) finds out, is
        ``DatabaseUnavailable``.
        """
        with translate_unavailable():
            async with self._sessions() as session:
                yield UnitOfWork(session)

    async def create_schema(self, token: CancellationToken) -> None:
        """Create missing tables (a demo has no migrations)."""
        with translate_unavailable():
            async with self.engine.begin() as connection, cancellable(connection, token):
                await connection.run_sync(Base.metadata.create_all)

    async def is_empty(self, token: CancellationToken) -> bool:
        """Whether the shop has no products yet, i.e. the database needs seeding."""
        with translate_unavailable():
            async with self.engine.connect() as connection, cancellable(connection, token):
                count = await connection.scalar(select(func.count()).select_from(Product))
        return not count

    async def ping(self, token: CancellationToken) -> None:
        """One round trip on a fresh connection; ``DatabaseUnavailable`` if it cannot be had."""
        with translate_unavailable():
            async with self._probe.connect() as connection, cancellable(connection, token):
                await connection.execute(text("SELECT 1"))

    def pool_status(self) -> PoolStatus:
        pool = self.engine.pool
        if isinstance(pool, QueuePool):
            return PoolStatus(pool.size(), pool.checkedout(), max(0, pool.overflow()))
        return PoolStatus(0, 0, 0)

    async def dispose(self) -> None:
        await self.engine.dispose()
        await self._probe.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()
