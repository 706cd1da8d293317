"""What each database driver needs to stop a statement without losing its connection.

Cancelling the task that awaits a query is the wrong tool for a pooled connection: SQLAlchemy
treats the ``CancelledError`` as an exit exception and invalidates the connection (a new backend
is forked for the next checkout), and aiosqlite's worker thread keeps running the query anyway.
So the token interrupts the *driver* and lets the statement fail in the ordinary way:

* asyncpg: ``pg_cancel_backend`` on the engine's side connection (``_sqlalchemy_pgcancel``), or
  else a PostgreSQL cancel request (the ``CancelRequest`` message libpq's ``PQcancel`` sends),
  through asyncpg's own ``Connection._cancel_current_command``, which also tracks the helper task
  so connection teardown cleans it up. Either way the backend answers the running statement with
  SQLSTATE 57014 and the connection stays in the pool.
* psycopg 3: the same side connection, or else psycopg's public ``AsyncConnection.cancel_safe()``
  (libpq 17's non-blocking cancel; older libpq runs ``cancel()`` in a thread). It returns once the
  server has closed the cancel socket, i.e. has signalled the backend, like asyncpg's.
* aiosqlite: its ``interrupt()``, SQLite's ``sqlite3_interrupt()``, which SQLite allows from any
  thread (aiosqlite calls it at once, not in its worker thread).

A cancel request that reaches the server before the statement does is ignored, so interrupts are
repeated (with back-off) for as long as the same statement is still running (``Guard`` in
``_sqlalchemy_guard``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, Protocol

from ._sqlalchemy_pgcancel import SideCanceller

__all__ = [
    "GuardedCursor",
    "Interrupter",
    "deadline_statement",
    "interrupter_for",
    "is_interruption",
    "lost_its_transaction",
]

QUERY_CANCELED: Final = "57014"
CANCEL_TIMEOUT: Final = 5.0

logger = logging.getLogger("request_aborted.sqlalchemy")


class Interrupter(Protocol):
    """Stops whatever the connection is running right now, and nothing that comes later."""

    first_retry: float
    """Seconds to wait for the statement to end before interrupting it again."""

    async def interrupt(self) -> None:
        """Deliver one interruption; return once it can no longer hit a later statement."""


class _AsyncpgCancel:
    first_retry = 0.005

    def __init__(self, connection: Any, side: Callable[[], SideCanceller | None]) -> None:
        self._connection = connection
        self._side = side

    async def interrupt(self) -> None:
        connection = self._connection
        if connection.is_closed():
            return
        side = self._side()
        if side is not None and await side.cancel(connection.get_server_pid()):
            return
        send = getattr(connection, "_cancel_current_command", None)
        if send is None:  # a future asyncpg without it: a reconnect beats a runaway query
            connection.terminate()
            return
        # The waiter completes once the server has closed the cancel socket, i.e. after it has
        # signalled the backend, so a statement sent after this cannot be hit by the request.
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        send(delivered)
        await delivered


class _PsycopgCancel:
    first_retry = 0.005

    def __init__(self, connection: Any, side: Callable[[], SideCanceller | None]) -> None:
        self._connection = connection
        self._side = side

    async def interrupt(self) -> None:
        connection = self._connection
        if connection.closed:
            return
        side = self._side()
        if side is not None and await side.cancel(connection.info.backend_pid):
            return
        try:
            await connection.cancel_safe(timeout=CANCEL_TIMEOUT)
        except Exception as exc:  # the statement runs on; the guard tries again shortly
            logger.warning("psycopg cancel request failed: %s", exc)


class _SqliteInterrupt:
    first_retry = 0.001

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def interrupt(self) -> None:
        # sqlite3_interrupt() from the loop's thread, past aiosqlite's worker queue: it is safe
        # from any thread, and it must not wait behind the statement it stops.
        with contextlib.suppress(ValueError):  # "no active connection": closed, nothing runs
            await self._connection.interrupt()


def interrupter_for(
    driver_connection: object, side: Callable[[], SideCanceller | None]
) -> Interrupter | None:
    """The interrupter for a driver connection, or ``None`` for drivers we cannot interrupt."""
    if _comes_from(driver_connection, "asyncpg"):
        return _AsyncpgCancel(driver_connection, side)
    if _comes_from(driver_connection, "psycopg"):
        # Only the asyncio connection: a sync one (a sync engine) has no loop to interrupt from.
        is_async = type(driver_connection).__name__.startswith("Async")
        return _PsycopgCancel(driver_connection, side) if is_async else None
    if _comes_from(driver_connection, "aiosqlite"):
        return _SqliteInterrupt(driver_connection)
    return None


def _comes_from(driver_connection: object, package: str) -> bool:
    """Whether the connection's class is the driver's, or derives from it (``connection_class``)."""
    return any(
        cls.__module__ == package or cls.__module__.startswith(package + ".")
        for cls in type(driver_connection).__mro__
    )


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        stack += [current.__cause__, current.__context__]
        if isinstance(orig, BaseException):
            stack.append(orig)


def is_interruption(error: BaseException) -> bool:
    """Whether a driver error says "your statement was cancelled" (by us, a timeout or an admin)."""
    for current in _chain(error):
        if getattr(current, "sqlstate", None) == QUERY_CANCELED:
            return True
        if isinstance(current, sqlite3.OperationalError) and str(current) == "interrupted":
            return True
    return False


def lost_its_transaction(pooled: Any) -> bool:
    """Whether an interruption left the driver believing in a transaction the server never began.

    asyncpg's ``Transaction.start`` makes itself the connection's transaction before it sends
    BEGIN and stays so when BEGIN fails: once a cancel has landed on BEGIN itself, every later
    statement on that connection would be sent as a SAVEPOINT and fail ("SAVEPOINT can only be
    used in transaction blocks"). The server is idle then, where a cancel landing on any later
    statement of the transaction leaves it in the aborted transaction. asyncpg offers no public
    way to forget the transaction, so such a connection is discarded (a reconnect, in a race a few
    microseconds wide). ``pooled``: SQLAlchemy's pooled connection.
    """
    driver = getattr(pooled, "driver_connection", None)
    if driver is None or not _comes_from(driver, "asyncpg"):
        return False
    if getattr(pooled.dbapi_connection, "autocommit", False):
        return False  # no BEGIN, no transaction object
    return not driver.is_closed() and not driver.is_in_transaction()


def deadline_statement(paramstyle: str) -> str:
    """SQL that lowers the transaction's ``statement_timeout`` to a bound number of milliseconds.

    ``SET LOCAL`` takes no bind parameter, so ``set_config(..., true)`` is used; binding keeps a
    single prepared statement per connection instead of one per distinct value. A stricter
    ``statement_timeout`` the session already has is kept (``LEAST``; 0 means none).
    """
    marker = {"numeric_dollar": "$1", "qmark": "?", "numeric": ":1", "named": ":ms"}.get(
        paramstyle, "%s"
    )
    return (
        "SELECT set_config('statement_timeout', "
        f"LEAST(NULLIF(s.setting::bigint, 0), {marker}::bigint)::text, true) "
        "FROM pg_settings s WHERE s.name = 'statement_timeout'"
    )


class GuardedCursor:
    """Wraps a driver's server-side cursor so every fetch is a guarded, interruptible operation.

    Fetches of a streamed result do not pass through SQLAlchemy's execute events, so without this
    a stream would keep fetching after its token fired whenever the token fired between fetches.
    """

    def __init__(self, inner: Any, around: Callable[[Awaitable[Any]], Awaitable[Any]]) -> None:
        self._inner = inner
        self._around = around

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __aiter__(self) -> GuardedCursor:
        return self

    async def __anext__(self) -> Any:
        row = await self.fetchone()
        if row is None:
            raise StopAsyncIteration
        return row

    async def fetch(self, *args: Any, **kwargs: Any) -> Any:
        return await self._around(self._inner.fetch(*args, **kwargs))

    async def fetchone(self) -> Any:
        return await self._around(self._inner.fetchone())

    async def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
        return await self._around(self._inner.fetchmany(*args, **kwargs))

    async def fetchall(self) -> Any:
        return await self._around(self._inner.fetchall())
