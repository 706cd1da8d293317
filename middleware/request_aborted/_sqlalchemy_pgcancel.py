"""A side connection per engine that cancels PostgreSQL backends with ``pg_cancel_backend``.

The protocol's own cancel request opens a new socket, and the postmaster forks a process to handle
it: measured on the CI machine that is 8 ms at the median and over 20 ms at p99, most of the time
to stop a statement. ``SELECT pg_cancel_backend(pid)`` on a connection that is already open takes
about half a millisecond, and like the cancel request it has signalled the backend by the time it
returns, so a statement sent afterwards cannot be hit. Requests that arrive together are sent as one
query. When the side connection cannot be used (no permission, connection failures, a backend pid
the server does not know), the caller falls back to the cancel request.

The side connection speaks the engine's own driver (asyncpg or psycopg), so an application needs
no second driver for it.

Behind a pooler such as PgBouncer the pid a client is given is not the server's, and
``pg_cancel_backend`` with it would signal nobody, or worse, somebody else. So the side connection
checks on opening that the pid its own connection was given is the backend it talks to; when it is
not, the engine is behind a pooler and is cancelled with cancel requests only, which the pooler
forwards to the right server connection. ``install_cancellation(engine, side_connection=False)``
says so up front (and is needed when an ``async_creator`` leads somewhere the URL does not).

The connection belongs to one event loop; it is closed by ``engine.dispose()``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from ._loop import asyncio_only

__all__ = ["SideCanceller", "close_side_canceller", "refuse_side_connection", "side_canceller"]

logger = logging.getLogger("request_aborted.sqlalchemy")

_CONNECT_TIMEOUT = 2.0
_RETRY_AFTER = 30.0
_DRIVERS = ("asyncpg", "psycopg")
# Simple query protocol, no parameter and no prepared statement: through a transaction pooler a
# prepared statement could be left on a server connection somebody else gets next.
_SAME_BACKEND = (
    "DO $$ BEGIN IF pg_backend_pid() <> {pid} THEN "
    "RAISE EXCEPTION 'backend pid % is not the announced {pid}', pg_backend_pid() "
    "USING ERRCODE = 'RA001'; END IF; END $$"
)


class BehindPooler(Exception):
    """The side connection's announced backend pid is not its backend: a pooler sits between."""


class _Side(Protocol):
    """One open side connection, whichever driver it speaks."""

    def is_closed(self) -> bool: ...

    async def cancel(self, pids: list[int]) -> dict[int, bool]: ...

    async def close(self) -> None: ...

    def terminate(self) -> None: ...


class _AsyncpgSide:
    _SQL = "SELECT p, pg_cancel_backend(p) FROM unnest($1::int[]) AS p"

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    @classmethod
    async def open(cls, engine: Engine) -> _AsyncpgSide:
        import asyncpg  # type: ignore[import-untyped]

        _, options = engine.dialect.create_connect_args(engine.url)
        accepted = inspect.signature(asyncpg.connect).parameters
        options = {key: value for key, value in options.items() if key in accepted}
        options["timeout"] = _CONNECT_TIMEOUT
        connection = await asyncpg.connect(**options)
        side = cls(connection)
        try:
            await connection.execute(_SAME_BACKEND.format(pid=int(connection.get_server_pid())))
            # The first int[] query introspects the type: 7 ms we must not spend mid-cancel.
            await side.cancel([])
        except BaseException as exc:
            connection.terminate()
            if getattr(exc, "sqlstate", None) == "RA001":
                raise BehindPooler(str(exc)) from None
            raise
        return side

    def is_closed(self) -> bool:
        closed: bool = self._connection.is_closed()
        return closed

    async def cancel(self, pids: list[int]) -> dict[int, bool]:
        rows = await self._connection.fetch(self._SQL, pids, timeout=_CONNECT_TIMEOUT)
        return {row[0]: bool(row[1]) for row in rows}

    async def close(self) -> None:
        await self._connection.close(timeout=1)

    def terminate(self) -> None:
        self._connection.terminate()


class _PsycopgSide:
    _SQL = "SELECT p, pg_cancel_backend(p) FROM unnest(%s::int[]) AS p"

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    @classmethod
    async def open(cls, engine: Engine) -> _PsycopgSide:
        import psycopg

        _, options = engine.dialect.create_connect_args(engine.url)
        options.setdefault("connect_timeout", max(2, round(_CONNECT_TIMEOUT)))
        options.update(autocommit=True, prepare_threshold=None)
        connection = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(**options), _CONNECT_TIMEOUT
        )
        try:
            await connection.execute(_SAME_BACKEND.format(pid=int(connection.info.backend_pid)))
        except BaseException as exc:
            await connection.close()
            if getattr(exc, "sqlstate", None) == "RA001":
                raise BehindPooler(str(exc)) from None
            raise
        return cls(connection)

    def is_closed(self) -> bool:
        closed: bool = self._connection.closed
        return closed

    async def cancel(self, pids: list[int]) -> dict[int, bool]:
        cursor = await asyncio.wait_for(
            self._connection.execute(self._SQL, (pids,)), _CONNECT_TIMEOUT
        )
        return {row[0]: bool(row[1]) for row in await cursor.fetchall()}

    async def close(self) -> None:
        await self._connection.close()

    def terminate(self) -> None:
        # psycopg closes without a round trip: the socket is shut and the server notices.
        self._connection.pgconn.finish()


class SideCanceller:
    """Sends ``pg_cancel_backend`` for one engine on one event loop; ``broken`` means fall back."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self._loop = loop
        self._connection: _Side | None = None
        self._pending: dict[int, list[asyncio.Future[bool]]] = {}
        self._worker: asyncio.Task[None] | None = None
        self._broken_until = 0.0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this side connection belongs to."""
        return self._loop

    @property
    def broken(self) -> bool:
        return self._loop.time() < self._broken_until

    async def cancel(self, pid: int) -> bool:
        """Signal backend ``pid``; ``False`` if this side connection could not do it."""
        if self.broken:
            return False
        done: asyncio.Future[bool] = self._loop.create_future()
        self._pending.setdefault(pid, []).append(done)
        if self._worker is None or self._worker.done():
            self._worker = self._loop.create_task(self._run())
        return await asyncio.shield(done)

    def warm_up(self) -> None:
        """Open the side connection in the background, so the first cancel does not pay for it."""
        if self._connection is None and not self.broken and self._worker is None:
            self._worker = self._loop.create_task(self._run())

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        if connection is not None and not connection.is_closed():
            try:
                await connection.close()
            except Exception:
                connection.terminate()

    async def _run(self) -> None:
        if not self._pending:
            try:
                await self._connect()
            except Exception as exc:
                self._give_up(exc)
        while self._pending:
            batch, self._pending = self._pending, {}
            results: dict[int, bool] = {}
            try:
                connection = await self._connect()
                results = await connection.cancel(list(batch))
            except Exception as exc:
                self._give_up(exc)
            finally:
                for pid, waiters in batch.items():
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(results.get(pid, False))
            if self.broken:
                for waiters in self._pending.values():
                    for waiter in waiters:
                        waiter.set_result(False)
                self._pending.clear()

    async def _connect(self) -> _Side:
        connection = self._connection
        if connection is not None and not connection.is_closed():
            return connection
        opener = _AsyncpgSide if self._engine.dialect.driver == "asyncpg" else _PsycopgSide
        connection = self._connection = await opener.open(self._engine)
        return connection

    def _give_up(self, exc: Exception) -> None:
        if isinstance(exc, BehindPooler):
            refuse_side_connection(self._engine)
            self._broken_until = float("inf")
            logger.info(
                "%s is behind a connection pooler (%s): cancelling with cancel requests, "
                "which the pooler forwards",
                self._engine.url.render_as_string(hide_password=True),
                str(exc).splitlines()[0],
            )
        else:
            self._broken_until = self._loop.time() + _RETRY_AFTER
            logger.warning(
                "pg_cancel_backend side connection unavailable (%s); "
                "falling back to cancel requests",
                exc,
            )
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.terminate()


_cancellers: weakref.WeakKeyDictionary[Engine, SideCanceller] = weakref.WeakKeyDictionary()
_refused: weakref.WeakSet[Engine] = weakref.WeakSet()


def refuse_side_connection(engine: Engine) -> None:
    """Use only cancel requests for ``engine`` (behind a pooler, backend pids are not real)."""
    _refused.add(engine)


def side_canceller(engine: Engine) -> SideCanceller | None:
    """The side canceller of an asyncpg or psycopg engine on the running loop (made on demand)."""
    if engine.dialect.driver not in _DRIVERS or engine in _refused:
        return None
    loop = asyncio_only("request_aborted.sqlalchemy")
    canceller = _cancellers.get(engine)
    if canceller is None or canceller.loop is not loop:
        canceller = _cancellers[engine] = SideCanceller(engine, loop)
    return canceller


async def close_side_canceller(engine: Engine) -> None:
    canceller = _cancellers.pop(engine, None)
    if canceller is not None and canceller.loop is asyncio.get_running_loop():
        await canceller.close()
