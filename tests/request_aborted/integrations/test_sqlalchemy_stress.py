"""A thousand cancellations at random points, then the pool and the server must be spotless.

Workers run reads, writes with commit, and streamed reads through a small pool while tokens fire
at random moments (before the statement, during it, around the commit, between fetches). Whatever
the timing, every operation ends in its result or ``OperationCancelled``, committed rows are
exactly the ones reported committed, nothing stays checked out or ``idle in transaction``, and
the connections are reused rather than replaced.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from request_aborted import CancellationTokenSource, OperationCancelled
from request_aborted.sqlalchemy import cancellable
from tests._fixtures.postgres import PostgresDatabase

from ._support import ConnectCounter, engine_for, run

pytestmark = pytest.mark.postgres

ITERATIONS = 1000
WORKERS = 8
POOL_SIZE = 4


async def one_operation(
    engine: AsyncEngine, rng: random.Random, number: int, outcomes: Counter[str]
) -> tuple[str, int, bool]:
    kind = rng.choice(["read", "write", "stream"])
    source = CancellationTokenSource()
    loop = asyncio.get_running_loop()
    delay = rng.choice([0.0, rng.uniform(0, 0.003), rng.uniform(0, 0.015), rng.uniform(0, 0.06)])
    handle = loop.call_later(delay, source.cancel) if delay else loop.call_soon(source.cancel)
    try:
        async with AsyncSession(engine) as session, cancellable(session, source.token):
            if kind == "read":
                value = await session.scalar(
                    text("SELECT CAST(:n AS int) FROM pg_sleep(0.004)"), {"n": number}
                )
                assert value == number
            elif kind == "write":
                await session.execute(text("INSERT INTO orders VALUES (:id)"), {"id": number})
                await session.execute(text("SELECT pg_sleep(0.002)"))
                await session.commit()
            else:
                result = await session.stream(text("SELECT g FROM generate_series(1, 300) AS g"))
                rows = [row async for row in result]
                assert len(rows) == 300
        outcomes[f"{kind} completed"] += 1
        return kind, number, True
    except OperationCancelled:
        outcomes[f"{kind} cancelled"] += 1
        return kind, number, False
    finally:
        handle.cancel()


def test_a_thousand_random_cancellations_leave_the_pool_and_server_clean(
    postgres_db: PostgresDatabase,
) -> None:
    postgres_db.query("CREATE TABLE orders (id int PRIMARY KEY)")

    async def main() -> tuple[Counter[str], list[tuple[str, int, bool]], int, int, list[int]]:
        engine = engine_for(postgres_db.dsn, pool_size=POOL_SIZE, max_overflow=0)
        connects = ConnectCounter(engine)
        outcomes: Counter[str] = Counter()
        numbers = iter(range(ITERATIONS))
        results: list[tuple[str, int, bool]] = []

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            for number in numbers:
                results.append(await one_operation(engine, rng, number, outcomes))

        try:
            await asyncio.gather(*(worker(seed) for seed in range(WORKERS)))
            checked_out: int = engine.pool.checkedout()  # type: ignore[attr-defined]

            async def usable() -> int:
                async with AsyncSession(engine) as session:
                    pid: int | None = await session.scalar(text("SELECT pg_backend_pid()"))
                    await asyncio.sleep(0.05)  # hold it, so every pooled connection is taken
                    assert pid is not None
                    return pid

            pids = await asyncio.gather(*(usable() for _ in range(POOL_SIZE)))
            return outcomes, results, checked_out, connects.count, pids
        finally:
            await engine.dispose()

    outcomes, results, checked_out, connects, pids = run(main())
    cancelled = sum(n for key, n in outcomes.items() if key.endswith("cancelled"))
    assert len(results) == ITERATIONS
    assert cancelled > ITERATIONS // 3, outcomes  # the test really does cancel things
    assert sum(n for key, n in outcomes.items() if key.endswith("completed")) > 50, outcomes
    assert checked_out == 0
    assert len(set(pids)) == POOL_SIZE
    # At least 99 % of the cancelled statements left their connection reusable.
    assert connects - POOL_SIZE <= cancelled // 100, (connects, outcomes)
    assert (
        postgres_db.query(
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
        )[0]["n"]
        == 0
    )
    committed = {number for kind, number, done in results if kind == "write" and done}
    present = {row["id"] for row in postgres_db.query("SELECT id FROM orders")}
    assert present == committed
