"""``cancellable(session, token)`` on SQLite through aiosqlite: the token interrupts the query.

aiosqlite runs each query in a worker thread, so cancelling the awaiting task leaves the query
running there. The token calls ``sqlite3.Connection.interrupt()`` instead; these tests measure the
process's CPU time to show the worker really stopped, on a real database file.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from request_aborted import (
    CancellationTokenSource,
    ClientDisconnected,
    OperationCancelled,
)
from request_aborted.sqlalchemy import cancellable

from ._support import ConnectCounter, engine_for, run

COUNT_TO = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) "
    "SELECT count(*) FROM c"
)
FOR_SECONDS = COUNT_TO.format(n=1_000_000_000)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # closed: 3.13 warns otherwise
        db.execute("CREATE TABLE orders (id integer)")
    return f"sqlite+aiosqlite:///{path}"


async def cpu_used_during(seconds: float) -> float:
    """CPU seconds the whole process (every thread) burns while this task sleeps."""
    before = time.process_time()
    await asyncio.sleep(seconds)
    return time.process_time() - before


def test_sqlite_query_is_interrupted_and_the_worker_thread_stops(sqlite_url: str) -> None:
    async def main() -> tuple[BaseException, float, float]:
        engine = engine_for(sqlite_url)
        source = CancellationTokenSource()
        try:
            async with AsyncSession(engine) as session:
                await session.execute(text("SELECT 1"))
                fired: list[float] = []

                def fire() -> None:
                    fired.append(time.perf_counter())
                    source.cancel(ClientDisconnected())

                asyncio.get_running_loop().call_later(0.2, fire)
                with pytest.raises(OperationCancelled) as caught:
                    async with cancellable(session, source.token):
                        await session.execute(text(FOR_SECONDS))
                stopped_after = time.perf_counter() - fired[0]
                idle_cpu = await cpu_used_during(0.3)
            return caught.value.reason, stopped_after, idle_cpu
        finally:
            await engine.dispose()

    reason, stopped_after, idle_cpu = run(main())
    assert isinstance(reason, ClientDisconnected)
    # "Promptly": the query would otherwise count for tens of seconds. The bound holds on a loaded
    # 2-core machine; the milliseconds are the benchmark's to measure.
    assert stopped_after < 1.0
    assert idle_cpu < 0.1  # a query still running would burn ~0.3 s of CPU here


def test_plain_task_cancel_waits_for_the_whole_sqlite_query(sqlite_url: str) -> None:
    """The baseline: a cancelled task is stuck until aiosqlite's worker finishes the query."""

    async def main() -> float:
        engine = engine_for(sqlite_url)

        async def query() -> None:
            async with AsyncSession(engine) as session:
                await session.execute(text(COUNT_TO.format(n=10_000_000)))  # 1-3 s, by machine

        try:
            task = asyncio.create_task(query())
            await asyncio.sleep(0.1)
            cancelled = time.perf_counter()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return time.perf_counter() - cancelled
        finally:
            await engine.dispose()

    assert run(main()) > 0.3


def test_sqlite_connection_stays_in_the_pool_after_interruptions(sqlite_url: str) -> None:
    async def main() -> tuple[int, int]:
        engine = engine_for(sqlite_url, pool_size=1, max_overflow=0)
        connects = ConnectCounter(engine)
        try:
            for _ in range(10):
                source = CancellationTokenSource()
                async with AsyncSession(engine) as session:
                    with pytest.raises(OperationCancelled):
                        async with cancellable(session, source.token):
                            asyncio.get_running_loop().call_later(0.01, source.cancel)
                            await session.execute(text(FOR_SECONDS))
                    assert await session.scalar(text("SELECT 41 + 1")) == 42
            return connects.count, engine.pool.checkedout()  # type: ignore[attr-defined]
        finally:
            await engine.dispose()

    assert run(main()) == (1, 0)


def test_sqlite_interrupted_write_leaves_nothing_behind(sqlite_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        engine = engine_for(sqlite_url)
        source = CancellationTokenSource()
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(OperationCancelled):
                    async with cancellable(session, source.token):
                        await session.execute(text("INSERT INTO orders VALUES (1)"))
                        asyncio.get_running_loop().call_later(0.05, source.cancel)
                        await session.execute(text(FOR_SECONDS))
                        await session.commit()
        finally:
            await engine.dispose()

    run(main())
    with contextlib.closing(sqlite3.connect(tmp_path / "app.db")) as db:
        assert db.execute("SELECT count(*) FROM orders").fetchone() == (0,)


def test_sqlite_statement_after_the_token_fired_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        engine = engine_for(sqlite_url)
        source = CancellationTokenSource()
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(OperationCancelled):
                    async with cancellable(session, source.token):
                        await session.execute(text("SELECT 1"))
                        source.cancel()
                        await session.execute(text("INSERT INTO orders VALUES (1)"))
        finally:
            await engine.dispose()

    run(main())
    with contextlib.closing(sqlite3.connect(tmp_path / "app.db")) as db:
        assert db.execute("SELECT count(*) FROM orders").fetchone() == (0,)


def test_sqlite_streamed_result_stops_after_the_token_fired(sqlite_url: str) -> None:
    async def main() -> int:
        engine = engine_for(sqlite_url)
        source = CancellationTokenSource()
        seen = 0
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(OperationCancelled):
                    async with cancellable(session, source.token):
                        numbers = COUNT_TO.replace("count(*)", "x").format(n=1_000_000)
                        result = await session.stream(text(numbers))
                        async for _ in result:
                            seen += 1
                            if seen == 5:
                                source.cancel()
            return seen
        finally:
            await engine.dispose()

    assert 5 <= run(main()) < 100  # rows SQLAlchemy already buffered, and no more
