"""Known ways cancellation has broken SQLAlchemy's asyncio pool and asyncpg, replayed under tokens.

Each test names the upstream report whose failure mode it replays (read from the installed
sources' history, not from the reports themselves) and checks the invariants that report lost:

* sqlalchemy#8145: a cancellation while a connection is checked out or still being opened must
  not leave it counted as checked out, nor leak its backend.
* sqlalchemy#12077: a cancellation while the pool resets a returned connection (its rollback) must
  still return or discard it, never strand it ``idle in transaction``.
* sqlalchemy#11125: a second cancellation while an invalidated connection is being terminated must
  not leak the connection.
* asyncpg#1156: a cancelled query must leave the protocol usable - no "another operation is in
  progress/cancelling" - and a cancel must never land on the *next* statement.
* asyncpg's ``Transaction.start`` (0.32) keeps a BEGIN that failed as the connection's
  transaction: a cancel landing on BEGIN must not leave that connection in the pool.

Timings are randomised with fixed seeds: each test walks many cancellation points.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from request_aborted import CancellationTokenSource, OperationCancelled
from request_aborted._sqlalchemy_guard import Guard
from request_aborted.sqlalchemy import cancellable
from tests._fixtures.postgres import PostgresDatabase, PostgresServer

from ._support import SLEEP_FOREVER, ConnectCounter, engine_for, run, wait_until

pytestmark = pytest.mark.postgres

POOL_SIZE = 2


async def assert_pool_clean(engine: AsyncEngine, db: PostgresDatabase) -> None:
    """Nothing checked out, nothing idle in transaction, every pooled connection answers."""
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    async def no_stragglers() -> bool:
        rows = await db.fetch(
            "SELECT state FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        states = [row["state"] for row in rows]
        return len(states) <= POOL_SIZE + 1 and not any(
            state and state.startswith("idle in transaction") for state in states
        )

    await wait_until(no_stragglers, within=5.0, interval=0.01)

    async def use() -> int | None:
        async with AsyncSession(engine) as session:
            value: int | None = await session.scalar(text("SELECT 1 FROM pg_sleep(0.02)"))
            return value

    assert await asyncio.gather(*(use() for _ in range(POOL_SIZE))) == [1] * POOL_SIZE


async def guarded_query(engine: AsyncEngine, token_source: CancellationTokenSource) -> None:
    async with AsyncSession(engine) as session, cancellable(session, token_source.token):
        await session.execute(text("INSERT INTO t VALUES (1)"))
        await session.execute(text("SELECT pg_sleep(0.01)"))
        await session.commit()


def test_task_cancelled_while_the_pool_opens_its_connection_leaks_nothing(
    postgres_db: PostgresDatabase,
) -> None:
    """sqlalchemy#8145: cancellation during checkout of a connection that is still connecting."""
    postgres_db.query("CREATE TABLE t (x int)")

    async def main() -> None:
        engine = engine_for(postgres_db.dsn, pool_size=POOL_SIZE, max_overflow=0)
        rng = random.Random(8145)
        try:
            for _ in range(40):
                await engine.dispose()  # every checkout must open a new connection
                tasks = [
                    asyncio.create_task(guarded_query(engine, CancellationTokenSource()))
                    for _ in range(POOL_SIZE + 1)
                ]
                await asyncio.sleep(rng.uniform(0, 0.008))
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            await assert_pool_clean(engine, postgres_db)
        finally:
            await engine.dispose()

    run(main())


def test_token_fired_while_waiting_for_a_pooled_connection_refuses_the_first_statement(
    postgres_db: PostgresDatabase,
) -> None:
    """sqlalchemy#8145, token side: the wait ends, the statement is refused, nothing reconnects."""
    postgres_db.query("CREATE TABLE t (x int)")

    async def main() -> tuple[list[str], int]:
        engine = engine_for(postgres_db.dsn, pool_size=1, max_overflow=0)
        connects = ConnectCounter(engine)
        outcomes: list[str] = []

        async def waiter(source: CancellationTokenSource) -> None:
            try:
                await guarded_query(engine, source)
                outcomes.append("completed")
            except OperationCancelled:
                outcomes.append("cancelled")

        try:
            for _ in range(20):
                holder = asyncio.create_task(waiter(CancellationTokenSource()))
                source = CancellationTokenSource()
                queued = asyncio.create_task(waiter(source))
                await asyncio.sleep(0.002)  # the second task now waits for the only connection
                source.cancel()
                await asyncio.gather(holder, queued)
            await assert_pool_clean(engine, postgres_db)
            return outcomes, connects.count
        finally:
            await engine.dispose()

    outcomes, connects = run(main())
    assert outcomes.count("cancelled") >= 15
    assert connects == 1


def test_cancellation_while_the_pool_resets_a_returned_connection_strands_nothing(
    postgres_db: PostgresDatabase,
) -> None:
    """sqlalchemy#12077: the token interrupts, then a plain cancel lands during cleanup."""
    postgres_db.query("CREATE TABLE t (x int)")

    async def main() -> None:
        engine = engine_for(postgres_db.dsn, pool_size=POOL_SIZE, max_overflow=0)
        rng = random.Random(12077)
        loop = asyncio.get_running_loop()
        try:
            for _ in range(60):
                source = CancellationTokenSource()
                task = asyncio.create_task(guarded_query(engine, source))
                fire_at = rng.uniform(0, 0.012)
                loop.call_later(fire_at, source.cancel)
                loop.call_later(fire_at + rng.uniform(0, 0.004), task.cancel)
                await asyncio.gather(task, return_exceptions=True)
            await assert_pool_clean(engine, postgres_db)
        finally:
            await engine.dispose()

    run(main())


def test_second_cancel_while_an_invalidated_connection_is_terminated_leaks_nothing(
    postgres_db: PostgresDatabase,
) -> None:
    """sqlalchemy#11125: cancel, and cancel again while SQLAlchemy terminates the connection."""

    async def main() -> None:
        engine = engine_for(postgres_db.dsn, pool_size=POOL_SIZE, max_overflow=0)
        rng = random.Random(11125)

        async def sleeper() -> None:
            async with AsyncSession(engine) as session:
                # Short: a terminated client does not stop a sleeping backend (nothing checks the
                # socket), and the test waits for those orphans to end by themselves.
                await session.execute(text("SELECT pg_sleep(0.2)"))

        try:
            for _ in range(25):
                task = asyncio.create_task(sleeper())
                await asyncio.sleep(rng.uniform(0.005, 0.02))
                task.cancel()
                await asyncio.sleep(rng.uniform(0, 0.003))
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await assert_pool_clean(engine, postgres_db)
        finally:
            await engine.dispose()

    run(main())


def test_an_interrupt_never_lands_on_the_next_statement_of_the_connection(
    postgres_db: PostgresDatabase,
) -> None:
    """asyncpg#1156 and the cancel-request race: a late interrupt must not hit the next query."""

    async def main() -> tuple[int, int]:
        engine = engine_for(postgres_db.dsn, pool_size=1, max_overflow=0)
        connects = ConnectCounter(engine)
        rng = random.Random(1156)
        loop = asyncio.get_running_loop()
        cancelled = 0
        try:
            for _ in range(300):
                source = CancellationTokenSource()
                # Fire around the moment the short statement completes.
                handle = loop.call_later(rng.uniform(0, 0.004), source.cancel)
                try:
                    async with AsyncSession(engine) as session, cancellable(session, source.token):
                        await session.execute(text("SELECT pg_sleep(0.002)"))
                except OperationCancelled:
                    cancelled += 1
                handle.cancel()
                # A block whose token never fires: it must never see a cancellation.
                async with AsyncSession(engine) as session:
                    calm = CancellationTokenSource()
                    async with cancellable(session, calm.token):
                        assert await session.scalar(text("SELECT 7 FROM pg_sleep(0.001)")) == 7
            return cancelled, connects.count
        finally:
            await engine.dispose()

    cancelled, connects = run(main())
    assert cancelled > 50
    assert connects == 1


def test_an_interrupt_in_flight_never_reaches_the_next_owner_of_a_returned_connection(
    postgres_db: PostgresDatabase,
) -> None:
    """The same race when the block hands its connection back before it ends (``close()``)."""

    async def main() -> int:
        engine = engine_for(postgres_db.dsn, pool_size=1, max_overflow=0)
        rng = random.Random(11561)
        loop = asyncio.get_running_loop()
        cancelled = 0

        async def returns_early(source: CancellationTokenSource) -> None:
            nonlocal cancelled
            session = AsyncSession(engine)
            try:
                async with cancellable(session, source.token):
                    await session.execute(text("SELECT pg_sleep(0.002)"))
                    await session.close()  # back to the pool, the block still open
                    await asyncio.sleep(0.005)
            except OperationCancelled:
                cancelled += 1
            finally:
                await session.close()

        async def next_owner() -> None:
            calm = CancellationTokenSource()
            async with AsyncSession(engine) as session, cancellable(session, calm.token):
                assert await session.scalar(text("SELECT 7 FROM pg_sleep(0.003)")) == 7

        try:
            for _ in range(150):
                source = CancellationTokenSource()
                handle = loop.call_later(rng.uniform(0.001, 0.004), source.cancel)
                first = asyncio.create_task(returns_early(source))
                await asyncio.sleep(0)
                await asyncio.gather(first, next_owner())
                handle.cancel()
            return cancelled
        finally:
            await engine.dispose()

    assert run(main()) > 20


def test_token_and_a_plain_task_cancel_together_leave_the_protocol_usable(
    postgres_db: PostgresDatabase,
) -> None:
    """asyncpg#1156: asyncpg's own cancel (task cancelled) racing ours must not wedge anything."""
    postgres_db.query("CREATE TABLE t (x int)")

    async def main() -> None:
        engine = engine_for(postgres_db.dsn, pool_size=POOL_SIZE, max_overflow=0)
        rng = random.Random(11560)
        loop = asyncio.get_running_loop()

        async def sleeper(source: CancellationTokenSource) -> None:
            async with AsyncSession(engine) as session, cancellable(session, source.token):
                await session.execute(text(SLEEP_FOREVER))

        try:
            for _ in range(30):
                source = CancellationTokenSource()
                task = asyncio.create_task(sleeper(source))
                at = rng.uniform(0.003, 0.015)
                loop.call_later(at, source.cancel)
                loop.call_later(at + rng.uniform(-0.002, 0.002), task.cancel)
                await asyncio.gather(task, return_exceptions=True)
            await assert_pool_clean(engine, postgres_db)
        finally:
            await engine.dispose()

    run(main())


def test_cancellation_still_works_after_the_server_restarts(
    postgres: PostgresServer, postgres_db: PostgresDatabase
) -> None:
    """The side connection and the pool die with the server; neither may break cancellation."""

    async def cancel_one(engine: AsyncEngine) -> None:
        source = CancellationTokenSource()
        async with AsyncSession(engine) as session:
            with pytest.raises(OperationCancelled):
                async with cancellable(session, source.token):
                    asyncio.get_running_loop().call_later(0.05, source.cancel)
                    await session.execute(text(SLEEP_FOREVER))
            assert await session.scalar(text("SELECT 1")) == 1

    async def main() -> None:
        engine = engine_for(postgres_db.dsn, pool_size=1, max_overflow=0, pool_pre_ping=True)
        try:
            await cancel_one(engine)
            await asyncio.to_thread(postgres.stop)
            await asyncio.to_thread(postgres.start)
            await cancel_one(engine)
            await cancel_one(engine)
        finally:
            await engine.dispose()

    run(main())


@pytest.mark.parametrize("ending", ["commit", "rollback"])
def test_a_cancel_inside_the_commit_or_rollback_hook_leaves_no_transaction_pooled(
    postgres_db: PostgresDatabase, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """Once a commit or rollback hook raises, SQLAlchemy counts the transaction as over and pools
    the connection without a ROLLBACK; a plain cancel landing in the hook (here, while it waits
    for an interrupt in flight) must not leave the server idle in transaction with the work."""
    postgres_db.query("CREATE TABLE t (x int)")

    async def main() -> list[str]:
        engine = engine_for(postgres_db.dsn, pool_size=1, max_overflow=0)
        try:
            token = CancellationTokenSource().token
            with pytest.raises(asyncio.CancelledError):
                async with AsyncSession(engine) as session, cancellable(session, token):
                    await session.execute(text("INSERT INTO t VALUES (1)"))

                    def cut_short(guard: object) -> None:
                        monkeypatch.undo()  # once: the clean-up after it runs as usual
                        raise asyncio.CancelledError

                    monkeypatch.setattr(Guard, "quiesce", cut_short)
                    if ending == "commit":
                        await session.commit()
                    else:
                        await session.rollback()
            rows = await postgres_db.fetch(
                "SELECT state FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            async with AsyncSession(engine) as session:  # the pool still serves
                assert await session.scalar(text("SELECT count(*) FROM t")) == 0
            return [row["state"] for row in rows]
        finally:
            await engine.dispose()

    states = run(main())
    assert not any(state and state.startswith("idle in transaction") for state in states)


def test_a_cancel_that_lands_on_begin_leaves_no_poisoned_connection_pooled(
    postgres_db: PostgresDatabase,
) -> None:
    """asyncpg's ``Transaction.start`` makes itself the connection's transaction before it sends
    BEGIN and stays so when BEGIN fails: after a cancel lands on BEGIN, every later statement on
    that connection is sent as a SAVEPOINT and fails ("SAVEPOINT can only be used in transaction
    blocks", seen once in the stress test). The pool must never hand such a connection out."""
    import asyncpg  # type: ignore[import-untyped]

    source = CancellationTokenSource()
    cut: list[CancellationTokenSource] = []

    class BeginCut(asyncpg.Connection):  # type: ignore[misc]
        """Answers the first BEGIN as a cancel landing on it does, after firing the token."""

        async def execute(self, query: str, *args: object, **options: object) -> str:
            if cut and query.startswith("BEGIN"):
                cut.pop().cancel()
                raise asyncpg.exceptions.QueryCanceledError("canceling statement: user request")
            result: str = await super().execute(query, *args, **options)
            return result

    async def main() -> int | None:
        engine = engine_for(
            postgres_db.dsn,
            pool_size=1,
            max_overflow=0,
            connect_args={"connection_class": BeginCut},
        )
        try:
            async with AsyncSession(engine) as session:  # the pool's connection, initialised
                await session.execute(text("SELECT 1"))
            cut.append(source)
            with pytest.raises(OperationCancelled):
                async with AsyncSession(engine) as session, cancellable(session, source.token):
                    await session.execute(text("SELECT 1"))
            assert not cut  # BEGIN was cut
            async with AsyncSession(engine) as session:  # the pool's one connection, or its heir
                value: int | None = await session.scalar(text("SELECT 1"))
                return value
        finally:
            await engine.dispose()

    assert run(main()) == 1
