"""Small helpers shared by the integration tests: running a coroutine, counting backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from request_aborted.sqlalchemy import install_cancellation

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
