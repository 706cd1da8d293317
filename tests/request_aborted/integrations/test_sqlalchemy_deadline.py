"""The remaining budget travels to PostgreSQL as the transaction's ``statement_timeout``.

The server then stops a statement at the deadline even when the client cannot (a blocked event
loop stands in for that here: the token's timer runs on a second loop that is kept busy past the
deadline), and the resulting error still reads as the token's cancellation.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from request_aborted import (
    CancellationTokenSource,
    DeadlineExceeded,
    OperationCancelled,
    RequestTimedOut,
)
from request_aborted.sqlalchemy import cancellable, install_cancellation
from tests._fixtures.postgres import PostgresDatabase

from ._support import SLEEP_FOREVER, PgTarget, engine_for, pooler_connect_args, run

pytestmark = pytest.mark.postgres


def test_remaining_budget_becomes_the_transaction_statement_timeout(pg_target: PgTarget) -> None:
    async def main() -> tuple[int | None, str | None]:
        engine = pg_target.engine()
        source = CancellationTokenSource(timeout=60.0)
        try:
            async with AsyncSession(engine) as session:
                async with cancellable(session, source.token):
                    inside = await session.scalar(
                        text("SELECT setting::int FROM pg_settings WHERE name='statement_timeout'")
                    )
                    await session.commit()
                after = await session.scalar(text("SHOW statement_timeout"))
            return inside, after
        finally:
            await engine.dispose()

    inside, after = run(main())
    # What was left of the 60 s when the transaction began; connecting (through PgBouncer, on a
    # loaded machine) may take a while, never half of it.
    assert inside is not None and 30_000 < inside <= 60_000
    assert after == "0"  # transaction-local: gone with the commit


def test_a_stricter_session_statement_timeout_is_kept(postgres_db: PostgresDatabase) -> None:
    async def main() -> str | None:
        engine = engine_for(
            postgres_db.dsn, connect_args={"server_settings": {"statement_timeout": "700"}}
        )
        source = CancellationTokenSource(timeout=60.0)
        try:
            async with AsyncSession(engine) as session, cancellable(session, source.token):
                value: str | None = await session.scalar(text("SHOW statement_timeout"))
                return value
        finally:
            await engine.dispose()

    assert run(main()) == "700ms"


def _late_timer_source(
    timeout: float,
    reason: BaseException,
    late_until: float,
    release: threading.Event | None = None,
) -> tuple[CancellationTokenSource, threading.Thread]:
    """A source whose timer lives on another loop that is blocked past the deadline.

    Stands in for a token whose timer runs late (a busy loop): the server's statement_timeout
    then fires before the token does, which is the case the pushed deadline exists for. The
    block lasts until ``late_until`` seconds, or until ``release`` is set if that comes first.
    """
    loop = asyncio.new_event_loop()
    created = threading.Event()
    holder: list[CancellationTokenSource] = []

    def serve() -> None:
        def create() -> None:
            source = CancellationTokenSource()
            source.cancel_after(timeout, reason)
            holder.append(source)
            created.set()
            blocked = late_until - timeout * 0.8
            if release is None:
                loop.call_later(timeout * 0.8, time.sleep, blocked)
            else:
                loop.call_later(timeout * 0.8, release.wait, blocked)

        loop.call_soon(create)
        loop.run_until_complete(asyncio.sleep(late_until + 0.2))
        loop.close()

    thread = threading.Thread(target=serve)
    thread.start()
    created.wait()
    return holder[0], thread


def test_server_statement_timeout_surfaces_with_the_tokens_own_reason(
    pg_target: PgTarget,
) -> None:
    """The server's timeout fires first; the token's late timer still names the reason."""
    timed_out = RequestTimedOut(0.4, policy="reports")
    threads: list[threading.Thread] = []

    async def main() -> OperationCancelled:
        # The token's timer is held up until the server's statement timeout has surfaced, then
        # catches up at once: always after the server's timer, and within the 0.1 s the library
        # waits for the token's own reason, however loaded the machine. The error handler that
        # notices is listened for before the library's (handle_error runs them in that order).
        surfaced = threading.Event()
        pooled = pooler_connect_args(pg_target.driver) if pg_target.bouncer else {}
        engine = create_async_engine(pg_target.url, connect_args=pooled)
        event.listen(engine.sync_engine, "handle_error", lambda _: surfaced.set())
        install_cancellation(engine)
        try:
            # Connect first: through PgBouncer on a loaded machine connecting alone can outlast
            # the 0.4 s budget, and the token would then fire before the statement ran at all.
            async with engine.connect() as warm:
                await warm.execute(text("SELECT 1"))
            source, thread = _late_timer_source(0.4, timed_out, late_until=2.0, release=surfaced)
            threads.append(thread)
            async with AsyncSession(engine) as session:
                with pytest.raises(OperationCancelled) as caught:
                    async with cancellable(session, source.token):
                        await session.execute(text(SLEEP_FOREVER))
            return caught.value
        finally:
            await engine.dispose()

    try:
        cancelled = run(main())
    finally:
        for thread in threads:
            thread.join()
    assert cancelled.reason is timed_out
    assert "statement timeout" in str(cancelled.__cause__)


def test_server_statement_timeout_without_the_tokens_reason_is_a_deadline_exceeded(
    postgres_db: PostgresDatabase,
) -> None:
    source, thread = _late_timer_source(0.3, RequestTimedOut(0.3), late_until=1.5)

    async def main() -> BaseException:
        engine = engine_for(postgres_db.dsn)
        try:
            async with AsyncSession(engine) as session:
                with pytest.raises(OperationCancelled) as caught:
                    async with cancellable(session, source.token):
                        await session.execute(text(SLEEP_FOREVER))
            return caught.value.reason
        finally:
            await engine.dispose()

    try:
        reason = run(main())
    finally:
        thread.join()
    assert type(reason) is DeadlineExceeded
    # The budget that was pushed: what was left of the 0.3 s when the transaction started.
    assert reason.timeout is not None and 0 < reason.timeout <= 0.3
