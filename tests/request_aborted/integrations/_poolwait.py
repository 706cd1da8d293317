"""Pool-wait scenarios shared by the SQLite and PostgreSQL tests (and any driver added later).

Each scenario takes an engine whose pool is exhausted by ``held()`` and returns what a test
asserts on: how a request waiting for a connection ended, how long after its token fired, and
whether the pool got every slot back. Driver-specific test modules only choose the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from request_aborted import CancellationToken, CancellationTokenSource, OperationCancelled
from request_aborted.sqlalchemy import cancellable

__all__ = ["WaitOutcome", "checked_out", "held", "wait_for_connection", "waiting_request"]


@dataclass
class WaitOutcome:
    error: BaseException | None
    waited: float
    """Seconds from the start of the wait to its end."""
    after_fire: float | None
    """Seconds from the token firing to the wait's end (``None`` if nothing fired it)."""


def checked_out(engine: AsyncEngine) -> int:
    """Connections the pool counts as in use (``QueuePool.checkedout()``)."""
    return int(engine.pool.checkedout())  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def held(engine: AsyncEngine, count: int) -> AsyncIterator[list[AsyncConnection]]:
    """Hold ``count`` connections (outside any block), as stalled export clients do."""
    async with contextlib.AsyncExitStack() as stack:
        connections = [await stack.enter_async_context(engine.connect()) for _ in range(count)]
        for connection in connections:
            await connection.execute(text("SELECT 1"))
        yield connections


async def waiting_request(engine: AsyncEngine, token: CancellationToken) -> None:
    """What a search does: a session in a cancellable block, whose first statement checks out."""
    async with AsyncSession(engine) as session, cancellable(session, token):
        await session.execute(text("SELECT 1"))


async def wait_for_connection(
    engine: AsyncEngine,
    source: CancellationTokenSource,
    *,
    fire_after: float | None,
    reason: BaseException | None = None,
) -> WaitOutcome:
    """Start a request that must wait for a connection; fire ``source`` after ``fire_after``."""
    loop = asyncio.get_running_loop()
    fired: list[float] = []  # when the token fired, by whatever cause (a call, its own timer)
    registration = source.token.register(lambda _: fired.append(time.perf_counter()))
    handle = None if fire_after is None else loop.call_later(fire_after, source.cancel, reason)
    start = time.perf_counter()
    error: BaseException | None = None
    try:
        await waiting_request(engine, source.token)
    except (Exception, OperationCancelled) as exc:  # OperationCancelled is a BaseException
        error = exc
    finally:
        registration.unregister()
        if handle is not None:
            handle.cancel()
    end = time.perf_counter()
    return WaitOutcome(error, end - start, end - fired[0] if fired else None)
