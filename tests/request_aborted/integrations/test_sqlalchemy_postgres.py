"""``cancellable(session, token)`` against a real PostgreSQL: statements stop on the server.

Every test gets a database of its own (``postgres_db``) and watches the server from a side
connection: ``pg_stat_activity`` says whether a backend still runs the statement, and the backend
pid (or the pool's connect count) says whether the pooled connection survived or was replaced.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from request_aborted import (
    CancellationRequested,
    CancellationTokenSource,
    ClientDisconnected,
    OperationCancelled,
)
from request_aborted.sqlalchemy import cancellable, install_cancellation
from tests._fixtures.pgbouncer import PgBouncer
from tests._fixtures.postgres import PostgresDatabase

from ._support import SLEEP_FOREVER, ConnectCounter, PgTarget, engine_for, run, wait_until

pytestmark = pytest.mark.postgres


async def backend_state(db: PostgresDatabase, pid: int) -> str | None:
    rows = await db.fetch("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
    return rows[0]["state"] if rows else None


def test_cancellable_stops_the_running_statement_on_the_server(pg_target: PgTarget) -> None:
    db = pg_target.db

    async def main() -> tuple[BaseException, str | None]:
        engine = pg_target.engine()
        source = CancellationTokenSource()
        try:
            async with AsyncSession(engine) as session:
                started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

                async def query() -> None:
                    async with cancellable(session, source.token):
                        # The server's pid, in the sleep's own transaction: through PgBouncer
                        # the next transaction may run on another server connection.
                        pid = await session.scalar(text("SELECT pg_backend_pid()"))
                        started.set_result(pid or 0)
                        await session.execute(text(SLEEP_FOREVER))

                task = asyncio.create_task(query())
                pid = await started
                await wait_until(lambda: _is_active(db, pid))
                source.cancel(ClientDisconnected())
                await wait_until(lambda: _not_active(db, pid), within=2.0)
                with pytest.raises(OperationCancelled) as caught:
                    await task
                return caught.value.reason, await backend_state(db, pid)
        finally:
            await engine.dispose()

    reason, state = run(main())
    assert isinstance(reason, ClientDisconnected)
    assert state == "idle"  # rolled back and still connected: not "idle in transaction", not gone


async def _is_active(db: PostgresDatabase, pid: int) -> bool:
    return await backend_state(db, pid) == "active"


async def _not_active(db: PostgresDatabase, pid: int) -> bool:
    return await backend_state(db, pid) != "active"


def test_cancellation_reuses_the_pooled_connection_instead_of_reconnecting(
    pg_target: PgTarget,
) -> None:
    async def main() -> tuple[int, set[int], int]:
        engine = pg_target.engine(pool_size=1, max_overflow=0)
        connects = ConnectCounter(engine)
        pids: set[int] = set()
        try:
            for _ in range(30):
                source = CancellationTokenSource()
                async with AsyncSession(engine) as session:
                    with pytest.raises(OperationCancelled):
                        async with cancellable(session, source.token):
                            pid = await session.scalar(text("SELECT pg_backend_pid()"))
                            assert pid is not None
                            pids.add(pid)
                            asyncio.get_running_loop().call_later(0.01, source.cancel)
                            await session.execute(text(SLEEP_FOREVER))
            return connects.count, pids, engine.pool.checkedout()  # type: ignore[attr-defined]
        finally:
            await engine.dispose()

    connects, pids, checked_out = run(main())
    assert connects == 1
    assert len(pids) == 1
    assert checked_out == 0


def test_plain_task_cancel_costs_a_reconnect_which_is_why_the_token_avoids_it(
    postgres_db: PostgresDatabase,
) -> None:
    """The baseline this integration improves on: SQLAlchemy invalidates on ``CancelledError``."""

    async def main() -> int:
        engine = engine_for(postgres_db.dsn, pool_size=1, max_overflow=0)
        connects = ConnectCounter(engine)

        async def query() -> None:
            async with AsyncSession(engine) as session:
                await session.execute(text(SLEEP_FOREVER))

        async def sleeping() -> set[int]:
            rows = await postgres_db.fetch(
                "SELECT pid FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                SLEEP_FOREVER,
            )
            return {row[0] for row in rows}

        async def new_sleeper(before: set[int]) -> bool:
            return bool(await sleeping() - before)

        try:
            for _ in range(3):
                before = await sleeping()  # earlier rounds' backends may still be sleeping
                task = asyncio.create_task(query())
                # Cancel while the statement runs on the server: after a fixed sleep a loaded
                # machine may still be connecting, and then there is nothing to invalidate.
                await wait_until(functools.partial(new_sleeper, before), within=10, interval=0.01)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            async with AsyncSession(engine) as session:
                await session.execute(text("SELECT 1"))
            return connects.count
        finally:
            await engine.dispose()

    assert run(main()) >= 3


def test_statement_started_after_the_token_fired_is_refused_before_reaching_the_server(
    postgres_db: PostgresDatabase,
) -> None:
    postgres_db.query("CREATE TABLE notes (body text)")

    async def main() -> BaseException:
        engine = engine_for(postgres_db.dsn)
        source = CancellationTokenSource()
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(OperationCancelled) as caught:
                    async with cancellable(session, source.token):
                        await session.execute(text("SELECT 1"))
                        source.cancel("user pressed stop")
                        await session.execute(text("INSERT INTO notes VALUES ('x')"))
                        await session.commit()
            return caught.value.reason
        finally:
            await engine.dispose()

    reason = run(main())
    assert isinstance(reason, CancellationRequested)
    assert str(reason) == "user pressed stop"
    assert postgres_db.query("SELECT count(*) AS n FROM notes")[0]["n"] == 0


def test_block_entered_with_a_fired_token_raises_at_once(postgres_db: PostgresDatabase) -> None:
    async def main() -> list[str]:
        engine = engine_for(postgres_db.dsn)
        source = CancellationTokenSource()
        source.cancel(ClientDisconnected())
        ran: list[str] = []
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(OperationCancelled):
                    async with cancellable(session, source.token):
                        ran.append("body")
            return ran
        finally:
            await engine.dispose()

    assert run(main()) == []


def test_interrupted_write_transaction_is_rolled_back_and_leaves_no_open_transaction(
    pg_target: PgTarget,
) -> None:
    postgres_db = pg_target.db
    postgres_db.query("CREATE TABLE orders (id int)")

    async def main() -> tuple[str | None, bool, int, int]:
        engine = pg_target.engine(pool_size=1, max_overflow=0)
        connects = ConnectCounter(engine)
        source = CancellationTokenSource()
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(OperationCancelled):
                    async with cancellable(session, source.token):
                        await session.execute(text("INSERT INTO orders VALUES (1)"))
                        pid = await session.scalar(text("SELECT pg_backend_pid()"))
                        asyncio.get_running_loop().call_later(0.05, source.cancel)
                        await session.execute(text(SLEEP_FOREVER))
                assert pid is not None
                state = await backend_state(postgres_db, pid)
                # The session is usable again right away, on the same connection (through
                # PgBouncer the server connection is PgBouncer's choice; the client's is kept).
                again = await session.scalar(text("SELECT pg_backend_pid()"))
                same = again == pid or pg_target.bouncer is not None
                await session.rollback()
            checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
            return state, same, checked_out, connects.count
        finally:
            await engine.dispose()

    assert run(main()) == ("idle", True, 0, 1)
    assert postgres_db.query("SELECT count(*) AS n FROM orders")[0]["n"] == 0


def test_commit_after_the_token_fired_is_refused_and_rolled_back(pg_target: PgTarget) -> None:
    postgres_db = pg_target.db
    postgres_db.query("CREATE TABLE orders (id int)")

    async def main() -> list[object]:
        engine = pg_target.engine()
        source = CancellationTokenSource()
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(OperationCancelled):
                    async with cancellable(session, source.token):
                        await session.execute(text("INSERT INTO orders VALUES (1)"))
                        source.cancel(ClientDisconnected())
                        await session.commit()
                return await postgres_db.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction'"
                )
        finally:
            await engine.dispose()

    assert run(main()) == []
    assert postgres_db.query("SELECT count(*) AS n FROM orders")[0]["n"] == 0


def test_commit_in_progress_finishes_when_the_token_fires_and_the_scope_waits_for_it(
    postgres_db: PostgresDatabase,
) -> None:
    """A disconnect during COMMIT must not leave it half done: the commit completes first."""
    postgres_db.run_script(
        """
        CREATE TABLE orders (id int);
        CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON orders DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION slow_commit();
        """
    )

    async def main() -> tuple[list[str], BaseException]:
        engine = engine_for(postgres_db.dsn)
        source = CancellationTokenSource()
        events: list[str] = []
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(OperationCancelled) as caught:
                    async with source.token.scope():
                        async with cancellable(session, source.token):
                            await session.execute(text("INSERT INTO orders VALUES (1)"))
                            asyncio.get_running_loop().call_later(0.1, source.cancel)
                            await session.commit()
                            events.append("committed")
                        events.append("block left")
                        await asyncio.sleep(1)
                        events.append("not reached")
            return events, caught.value.reason
        finally:
            await engine.dispose()

    events, reason = run(main())
    assert events == ["committed", "block left"]
    assert isinstance(reason, CancellationRequested)
    assert postgres_db.query("SELECT count(*) AS n FROM orders")[0]["n"] == 1


def test_enclosing_scope_does_not_cancel_the_task_inside_the_block(
    postgres_db: PostgresDatabase,
) -> None:
    """With ``token.scope()`` around, the database cancel still wins: no reconnect."""

    async def main() -> tuple[int, int]:
        engine = engine_for(postgres_db.dsn, pool_size=1, max_overflow=0)
        connects = ConnectCounter(engine)
        try:
            for _ in range(5):
                source = CancellationTokenSource()
                with pytest.raises(OperationCancelled):
                    async with (
                        source.token.scope(),
                        AsyncSession(engine) as session,
                        cancellable(session, source.token),
                    ):
                        asyncio.get_running_loop().call_later(0.02, source.cancel)
                        await session.execute(text(SLEEP_FOREVER))
            return connects.count, engine.pool.checkedout()  # type: ignore[attr-defined]
        finally:
            await engine.dispose()

    assert run(main()) == (1, 0)


def test_streamed_result_stops_at_the_next_fetch_after_the_token_fired(
    pg_target: PgTarget,
) -> None:
    async def main() -> tuple[int, int]:
        engine = pg_target.engine(pool_size=1, max_overflow=0)
        connects = ConnectCounter(engine)
        source = CancellationTokenSource()
        seen = 0
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(OperationCancelled):
                    async with cancellable(session, source.token):
                        result = await session.stream(
                            text("SELECT g FROM generate_series(1, 1000000) AS g")
                        )
                        async for _ in result:
                            seen += 1
                            if seen == 10:
                                source.cancel()
                assert await session.scalar(text("SELECT 1")) == 1
            return seen, connects.count
        finally:
            await engine.dispose()

    seen, connects = run(main())
    assert 10 <= seen < 1000  # the rows already buffered, and not one fetch more
    assert connects == 1


def test_token_fired_from_another_thread_stops_the_statement(
    postgres_db: PostgresDatabase,
) -> None:
    async def main() -> BaseException:
        engine = engine_for(postgres_db.dsn)
        source = CancellationTokenSource()
        timer = threading.Timer(0.1, source.cancel, (ClientDisconnected(),))
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(OperationCancelled) as caught:
                    async with cancellable(session, source.token):
                        timer.start()
                        await session.execute(text(SLEEP_FOREVER))
            return caught.value.reason
        finally:
            timer.join()
            await engine.dispose()

    assert isinstance(run(main()), ClientDisconnected)


def test_nested_block_stops_when_the_outer_token_fires(postgres_db: PostgresDatabase) -> None:
    async def main() -> BaseException:
        engine = engine_for(postgres_db.dsn)
        outer, inner = CancellationTokenSource(), CancellationTokenSource()
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(OperationCancelled) as caught:
                    async with (
                        cancellable(session, outer.token),
                        cancellable(session, inner.token),
                    ):
                        asyncio.get_running_loop().call_later(
                            0.05, outer.cancel, ClientDisconnected()
                        )
                        await session.execute(text(SLEEP_FOREVER))
            return caught.value.reason
        finally:
            await engine.dispose()

    assert isinstance(run(main()), ClientDisconnected)


def test_token_firing_after_the_block_ends_touches_nothing(postgres_db: PostgresDatabase) -> None:
    async def main() -> float:
        engine = engine_for(postgres_db.dsn)
        source = CancellationTokenSource()
        try:
            async with AsyncSession(engine) as session:
                async with cancellable(session, source.token):
                    await session.execute(text("SELECT 1"))
                asyncio.get_running_loop().call_later(0.05, source.cancel)
                started = time.perf_counter()
                await session.execute(text("SELECT pg_sleep(0.2)"))
                return time.perf_counter() - started
        finally:
            await engine.dispose()

    assert run(main()) >= 0.19


def test_a_database_error_that_is_not_a_cancellation_stays_what_it_is(
    postgres_db: PostgresDatabase,
) -> None:
    async def main() -> None:
        engine = engine_for(postgres_db.dsn)
        source = CancellationTokenSource(timeout=30)
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(ProgrammingError):
                    async with cancellable(session, source.token):
                        await session.execute(text("SELECT * FROM no_such_table"))
        finally:
            await engine.dispose()

    run(main())


def test_falls_back_to_the_cancel_request_when_no_side_connection_can_be_opened(
    postgres_db: PostgresDatabase,
) -> None:
    """An engine built with ``async_creator`` and a URL that leads nowhere still cancels."""
    import asyncpg  # type: ignore[import-untyped]

    async def creator() -> object:
        return await asyncpg.connect(postgres_db.asyncpg_dsn)

    async def main() -> tuple[BaseException, int]:
        engine = engine_for(
            "postgresql+asyncpg://nobody@127.0.0.1:1/none",
            async_creator=creator,
            pool_size=1,
            max_overflow=0,
        )
        connects = ConnectCounter(engine)
        source = CancellationTokenSource()
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(OperationCancelled) as caught:
                    async with cancellable(session, source.token):
                        asyncio.get_running_loop().call_later(0.1, source.cancel)
                        await session.execute(text(SLEEP_FOREVER))
                assert await session.scalar(text("SELECT 1")) == 1
            return caught.value.reason, connects.count
        finally:
            await engine.dispose()

    reason, connects = run(main())
    assert isinstance(reason, CancellationRequested)
    assert connects == 1


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_the_side_connection_can_be_turned_off_for_poolers(
    postgres_db: PostgresDatabase, driver: str
) -> None:
    """``side_connection=False``: the driver's own cancel request only, and no extra backend."""

    async def main() -> tuple[BaseException, int]:
        url = postgres_db.server.url(postgres_db.name, driver)
        engine = create_async_engine(url, pool_size=1, max_overflow=0)
        install_cancellation(engine, side_connection=False)
        source = CancellationTokenSource()
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(OperationCancelled) as caught:
                    async with cancellable(session, source.token):
                        asyncio.get_running_loop().call_later(0.1, source.cancel)
                        await session.execute(text(SLEEP_FOREVER))
                backends = len(postgres_db.backends())
            return caught.value.reason, backends
        finally:
            await engine.dispose()

    reason, backends = run(main())
    assert isinstance(reason, CancellationRequested)
    assert backends == 1  # the pool's connection, and no side connection next to it


def test_cancellable_works_on_a_connection_from_engine_begin(
    postgres_db: PostgresDatabase,
) -> None:
    postgres_db.query("CREATE TABLE orders (id int)")

    async def main() -> tuple[BaseException, int]:
        engine = engine_for(postgres_db.dsn, pool_size=1, max_overflow=0)
        connects = ConnectCounter(engine)
        source = CancellationTokenSource()
        try:
            with pytest.raises(OperationCancelled) as caught:
                async with engine.begin() as connection, cancellable(connection, source.token):
                    await connection.execute(text("INSERT INTO orders VALUES (1)"))
                    asyncio.get_running_loop().call_later(0.05, source.cancel)
                    await connection.execute(text(SLEEP_FOREVER))
            async with engine.connect() as connection:
                assert await connection.scalar(text("SELECT 1")) == 1
            return caught.value.reason, connects.count
        finally:
            await engine.dispose()

    reason, connects = run(main())
    assert isinstance(reason, CancellationRequested)
    assert connects == 1
    assert postgres_db.query("SELECT count(*) AS n FROM orders")[0]["n"] == 0


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_side_connection_detects_pgbouncer_and_cancels_through_it(
    postgres_db: PostgresDatabase,
    pgbouncer: PgBouncer,
    driver: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Behind a pooler the pid a client is given is not a backend's: no ``pg_cancel_backend``
    with it; the cancel request goes to PgBouncer, which forwards it, and the statement stops."""
    target = PgTarget(driver, postgres_db, pgbouncer)

    async def main() -> tuple[list[BaseException], list[object]]:
        engine = target.engine(pool_size=1, max_overflow=0)
        reasons: list[BaseException] = []
        try:
            for _ in range(3):  # the first abort opens the side connection, which finds PgBouncer
                source = CancellationTokenSource()
                async with AsyncSession(engine) as session:
                    with pytest.raises(OperationCancelled) as caught:
                        async with cancellable(session, source.token):
                            asyncio.get_running_loop().call_later(0.1, source.cancel)
                            await session.execute(text(SLEEP_FOREVER))
                reasons.append(caught.value.reason)
            return reasons, await postgres_db.fetch(
                "SELECT pid FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                SLEEP_FOREVER,
            )
        finally:
            await engine.dispose()

    with caplog.at_level("INFO", logger="request_aborted.sqlalchemy"):
        reasons, still_sleeping = run(main())
    assert all(isinstance(reason, CancellationRequested) for reason in reasons)
    assert still_sleeping == []
    assert any("behind a connection pooler" in r.getMessage() for r in caplog.records)
    assert not any("side connection unavailable" in r.getMessage() for r in caplog.records)
