"""A request waiting for a pooled connection stops when its token fires, and no slot is lost.

The pool is held the way stalled export clients hold it (pool 1 + 1 overflow, both checked out),
with ``pool_timeout`` at 30 s: every wait here ending in well under that proves the token, not the
pool's timer, ended it. Each scenario (``_poolwait``) runs on SQLite through aiosqlite and on a real
PostgreSQL through every driver the integration supports, directly and through PgBouncer. Latency
figures are the benchmark's job (``bench/bench_poolwait.py``); the bounds here only tell "the
token" from "the pool timeout".
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from request_aborted import (
    CancellationTokenSource,
    ClientDisconnected,
    DeadlineExceeded,
    OperationCancelled,
)
from tests._fixtures.pgbouncer import PgBouncer
from tests._fixtures.postgres import PostgresDatabase

from ._poolwait import checked_out, held, wait_for_connection, waiting_request
from ._support import PgTarget, engine_for, run
from .conftest import TARGETS

POOL = {"pool_size": 1, "max_overflow": 1, "pool_timeout": 30}
TOKEN_NOT_POOL = 2.0  # far above the 10 ms goal, far below the 30 s pool timeout


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    path = tmp_path / "pool.db"
    sqlite3.connect(path).close()
    return f"sqlite+aiosqlite:///{path}"


def _driver(name: str) -> str:
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"the {name} driver is not installed")
    return name


EngineFactory = Callable[..., AsyncEngine]


@pytest.fixture(params=["sqlite", *TARGETS])
def make_engine(request: pytest.FixtureRequest) -> EngineFactory:
    """Every database and driver ``cancellable`` supports, PostgreSQL ones on a real server,
    directly and through PgBouncer in transaction mode: ``make_engine(**pool_options)``."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
        return functools.partial(engine_for, url)
    driver, _, via = str(request.param).partition("-")
    _driver(driver)
    request.applymarker(pytest.mark.postgres)
    db: PostgresDatabase = request.getfixturevalue("postgres_db")
    bouncer: PgBouncer | None = request.getfixturevalue("pgbouncer") if via else None
    return PgTarget(driver, db, bouncer).engine


def test_pool_wait_ends_when_the_token_fires_and_loses_no_slot(make_engine: EngineFactory) -> None:
    async def main() -> None:
        engine = make_engine(**POOL)
        try:
            async with held(engine, 2):
                source = CancellationTokenSource()
                outcome = await wait_for_connection(
                    engine, source, fire_after=0.2, reason=ClientDisconnected()
                )
                assert checked_out(engine) == 2
            assert isinstance(outcome.error, OperationCancelled), outcome
            assert isinstance(outcome.error.reason, ClientDisconnected)
            assert outcome.after_fire is not None and outcome.after_fire < TOKEN_NOT_POOL
            assert checked_out(engine) == 0
            await _pool_serves_its_full_size(engine, 2)
        finally:
            await engine.dispose()

    run(main())


def test_pool_wait_is_bounded_by_the_token_deadline(make_engine: EngineFactory) -> None:
    async def main() -> None:
        engine = make_engine(**POOL)
        try:
            async with held(engine, 2):
                outcome = await wait_for_connection(
                    engine, CancellationTokenSource(timeout=0.3), fire_after=None
                )
            assert isinstance(outcome.error, OperationCancelled), outcome
            assert isinstance(outcome.error.reason, DeadlineExceeded)
            assert 0.25 < outcome.waited < 0.3 + TOKEN_NOT_POOL
            assert checked_out(engine) == 0
        finally:
            await engine.dispose()

    run(main())


def test_pool_wait_inside_a_token_scope_ends_with_the_token(make_engine: EngineFactory) -> None:
    # The measured failure: the block's critical section held the scope off, and nothing else
    # watched the wait, so a departed client's search waited for the 30 s pool timeout.
    async def main() -> None:
        engine = make_engine(**POOL)
        try:
            async with held(engine, 2):
                source = CancellationTokenSource()
                asyncio.get_running_loop().call_later(0.2, source.cancel, ClientDisconnected())
                with pytest.raises(OperationCancelled) as caught:
                    async with asyncio.timeout(TOKEN_NOT_POOL), source.token.scope():
                        await waiting_request(engine, source.token)
            assert isinstance(caught.value.reason, ClientDisconnected)
            assert checked_out(engine) == 0
        finally:
            await engine.dispose()

    run(main())


def test_pool_wait_refuses_at_once_when_the_token_already_fired(make_engine: EngineFactory) -> None:
    async def main() -> None:
        engine = make_engine(**POOL)
        try:
            async with held(engine, 2):
                source = CancellationTokenSource()
                source.cancel(ClientDisconnected())
                outcome = await wait_for_connection(engine, source, fire_after=None)
            assert isinstance(outcome.error, OperationCancelled), outcome
            assert outcome.waited < TOKEN_NOT_POOL
            assert checked_out(engine) == 0
        finally:
            await engine.dispose()

    run(main())


def test_pool_wait_without_a_deadline_keeps_the_pool_timeout(sqlite_url: str) -> None:
    async def main() -> None:
        engine = engine_for(sqlite_url, **{**POOL, "pool_timeout": 0.2})
        try:
            async with held(engine, 2):
                outcome = await wait_for_connection(
                    engine, CancellationTokenSource(), fire_after=None
                )
            assert isinstance(outcome.error, PoolTimeoutError), outcome
            assert checked_out(engine) == 0
        finally:
            await engine.dispose()

    run(main())


def test_pool_wait_cancelled_by_its_caller_loses_no_slot(sqlite_url: str) -> None:
    async def main() -> None:
        engine = engine_for(sqlite_url, **POOL)
        try:
            async with held(engine, 2):
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await waiting_request(engine, CancellationTokenSource().token)
                assert checked_out(engine) == 2
            assert checked_out(engine) == 0
            await _pool_serves_its_full_size(engine, 2)
        finally:
            await engine.dispose()

    run(main())


def test_pool_wait_outside_a_block_is_the_pools_own(sqlite_url: str) -> None:
    async def main() -> None:
        engine = engine_for(sqlite_url, **{**POOL, "pool_timeout": 0.2})
        try:
            async with held(engine, 2), engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    with pytest.raises(PoolTimeoutError):
        run(main())


def test_pool_wait_loses_no_slot_when_tokens_fire_as_connections_come_back(
    make_engine: EngineFactory,
) -> None:
    # Fires land before, during and just after the moment a connection is handed to the waiter:
    # a connection the waiter took as its token fired must go back to the pool, not vanish.
    async def main() -> None:
        engine = make_engine(**POOL)
        rng = random.Random(15)
        try:
            for _ in range(30):
                async with held(engine, 2) as connections:
                    source = CancellationTokenSource()
                    loop = asyncio.get_running_loop()
                    delay = rng.uniform(0.0, 0.01)
                    loop.call_later(delay, source.cancel, ClientDisconnected())
                    closes: list[asyncio.Future[None]] = []
                    closing = loop.call_later(
                        delay + rng.uniform(-0.002, 0.002),
                        lambda closes=closes, first=connections[0]: closes.append(
                            asyncio.ensure_future(first.close())
                        ),
                    )
                    waiter = asyncio.ensure_future(waiting_request(engine, source.token))
                    await asyncio.wait({waiter}, timeout=TOKEN_NOT_POOL)
                    closing.cancel()
                    assert waiter.done()
                    error = waiter.exception()
                    assert error is None or isinstance(error, OperationCancelled), error
                    # The close scheduled above, if it ran, ends before held() closes the same
                    # connection: two rollbacks at once on one psycopg connection fail.
                    await asyncio.gather(*closes)
            assert checked_out(engine) == 0
            await _pool_serves_its_full_size(engine, 2)
        finally:
            await engine.dispose()

    run(main())


async def _pool_serves_its_full_size(engine: AsyncEngine, size: int) -> None:
    """All ``size`` connections can be checked out at once: nothing leaked, nothing stuck."""
    async with asyncio.timeout(TOKEN_NOT_POOL), held(engine, size):
        assert checked_out(engine) == size


def test_pool_wait_connection_taken_as_the_token_fired_goes_back_even_into_a_full_queue() -> None:
    """The race the PostgreSQL soak hit once (a request ended with ``queue.Full``, a slot lost).

    The wait took connection A as its token fired; meanwhile an overflow connection B came back
    into the space A had left. A cannot be put back, so it must go the way the pool itself returns
    a connection to a full queue (closed, overflow lowered), never be dropped. Driven directly: the
    moment is a single loop turn that no scenario hits reliably.
    """
    from sqlalchemy.util.queue import AsyncAdaptedQueue

    from request_aborted._sqlalchemy_poolwait import CancellableQueue

    async def main() -> tuple[list[str], str]:
        inner: AsyncAdaptedQueue[str] = AsyncAdaptedQueue(maxsize=1)
        inner.put_nowait("B")  # the overflow connection, back in A's place
        given_back: list[str] = []
        queue = CancellableQueue(inner, lambda: None, given_back.append)
        taken = asyncio.get_running_loop().create_task(asyncio.sleep(0, "A"))
        await asyncio.sleep(0.01)  # the wait's own get had finished, with A
        await queue._give_up(taken)
        return given_back, inner.get_nowait()

    given_back, queued = run(main())
    assert given_back == ["A"]  # through the pool's own return path
    assert queued == "B"
