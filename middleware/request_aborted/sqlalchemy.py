"""Stop SQLAlchemy statements on the database server when a token fires (extra ``[sqlalchemy]``).

Cancelling the task that awaits ``session.execute()`` does not do what a request abort needs:
SQLAlchemy invalidates the connection on ``CancelledError`` (every abort forks a new PostgreSQL
backend), and aiosqlite keeps running the query in its thread. Here the token stops the *statement*
instead, and the error comes back through SQLAlchemy's ordinary error path::

    from request_aborted.sqlalchemy import cancellable, install_cancellation

    engine = create_async_engine("postgresql+asyncpg://...")
    install_cancellation(engine)              # once, at startup (optional for single-bind sessions)

    async def search(session: AsyncSession, q: str, token: CancellationToken) -> list[Item]:
        async with cancellable(session, token):
            return list(await session.scalars(select(Item).where(Item.name.ilike(q))))

    async def place(session: AsyncSession, order: Order, token: CancellationToken) -> None:
        async with cancellable(session, token):
            session.add(order)
            await session.commit()

Inside the block, for every connection the session (or ``AsyncConnection``) uses:

* **A statement already running when the token fires is stopped on the server**: PostgreSQL gets a
  cancel request (the backend goes idle within milliseconds), SQLite gets ``interrupt()``. The
  statement raises ``OperationCancelled(token.reason)`` where it was awaited; the task itself is
  never cancelled, so the pooled connection stays valid and is reused, not reconnected.
* **A statement started after the token fired is refused** before it reaches the driver, and so is
  the next fetch of a streamed result (``session.stream()``).
* **A wait for a pooled connection ends when the token fires**: a checkout inside the block that
  finds the async pool empty waits on the token too, and on its remaining budget, so a request
  whose client left, or whose deadline passed, leaves the queue within milliseconds with
  ``OperationCancelled`` instead of holding its place until ``pool_timeout``. The pool loses no
  slot (a connection handed over as the token fired goes back); ``pool_timeout`` still applies.
  A connection taken outside the block (``engine.connect()`` before ``cancellable``) waits as
  SQLAlchemy alone would.
* **The remaining budget goes to the server**: when a token with a deadline starts work in a
  PostgreSQL transaction, ``SELECT set_config('statement_timeout', <ms>, true)`` lowers that
  transaction's ``statement_timeout`` (never raises a stricter one), so a stuck client cannot leave
  a query running past its deadline. That timeout also surfaces as ``OperationCancelled`` carrying
  the token's own deadline reason (``RequestTimedOut``), or ``DeadlineExceeded`` if the token's
  timer has not caught up. It costs one round trip per transaction, only for tokens with deadlines.
* **Commit is the point of no return**: a commit that starts after the token fired is refused and
  rolled back; once ``COMMIT`` is sent, the token no longer interrupts it.
* **Cancelled work is rolled back**: when ``OperationCancelled`` leaves the block, the session (or
  connection) is rolled back in a shielded task, so nothing partial is visible and no backend is
  left ``idle in transaction``.
* **Enclosing ``token.scope()`` blocks hold their interruption** until the block ends (the block is
  a ``critical_section``), so their ``task.cancel()`` does not race the database cancel and cost
  the connection; the block's own token still ends statements, commits not yet sent and pool
  waits. Keep the block to database work.

To finish a commit whatever happens, bind the critical section's inner token instead::

    async with token.critical_section(grace=5) as inner, cancellable(session, inner):
        await session.commit()

Limitations: drivers other than asyncpg, psycopg 3 and aiosqlite get refusal but no interruption
of running statements; a streamed result must be consumed inside the block that started it;
sessions with several binds need ``install_cancellation()`` on each engine.
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import Token
from types import TracebackType
from typing import Generic, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from request_aborted import (
    CancellationToken,
    CancellationTokenSource,
    CriticalSection,
    OperationCancelled,
)

from ._loop import asyncio_only
from ._sqlalchemy_guard import finish
from ._sqlalchemy_hooks import Binding, bound, install
from ._sqlalchemy_pgcancel import refuse_side_connection

__all__ = ["Cancellable", "cancellable", "install_cancellation"]

logger = logging.getLogger("request_aborted.sqlalchemy")

DB = TypeVar("DB", AsyncSession, AsyncConnection)


def install_cancellation(engine: AsyncEngine | Engine, *, side_connection: bool = True) -> None:
    """Hook ``engine`` so ``cancellable`` blocks can stop its statements; safe to call twice.

    ``cancellable`` installs the hooks on a session's single bind by itself; call this at startup
    for sessions with several binds, or to keep the first request from paying for it. The hooks
    cost a ContextVar lookup per statement outside ``cancellable`` blocks.

    PostgreSQL statements are cancelled with ``pg_cancel_backend`` on one extra connection per
    engine (0.5 ms) rather than the protocol's cancel request (a forked process, several ms).
    Behind PgBouncer or another pooler the backend pid a client sees is not the server's: the side
    connection notices that on opening and steps aside for cancel requests, which the pooler
    forwards; ``side_connection=False`` says so up front.
    """
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if not side_connection:
        refuse_side_connection(sync_engine)
    install(sync_engine)


def cancellable(db: DB, token: CancellationToken) -> Cancellable[DB]:
    """Bind ``token`` to every statement ``db`` runs inside ``async with``; see the module doc."""
    return Cancellable(db, token)


class Cancellable(Generic[DB]):
    """The ``async with cancellable(session, token):`` block; yields the session unchanged."""

    __slots__ = ("_binding", "_db", "_linked", "_reset", "_section", "_token")

    def __init__(self, db: DB, token: CancellationToken) -> None:
        self._db: DB = db
        self._token = token
        self._binding: Binding | None = None
        self._linked: CancellationTokenSource | None = None
        self._reset: Token[Binding | None] | None = None
        self._section: CriticalSection | None = None

    async def __aenter__(self) -> DB:
        if self._binding is not None:
            raise RuntimeError("a cancellable block can be entered only once")
        asyncio_only("request_aborted.sqlalchemy")  # its drivers are asyncio's: say so under trio
        self._token.raise_if_cancellation_requested()
        engine = _engine_of(self._db)
        if engine is not None:
            install(engine)
        token, outer = self._token, bound.get()
        if outer is not None and outer.token is not token:
            # Nested blocks: the inner one must still stop when the outer token fires.
            self._linked = CancellationTokenSource.linked(outer.token, token)
            token = self._linked.token
        self._binding = Binding(token)
        self._section = self._token.critical_section()
        await self._section.__aenter__()
        self._reset = bound.set(self._binding)
        return self._db

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._binding is not None and self._section is not None and self._reset is not None
        bound.reset(self._reset)
        try:
            await self._binding.release()
            if isinstance(exc, OperationCancelled):
                await _rollback(self._db)
        finally:
            await self._section.__aexit__(exc_type, exc, tb)
            if self._linked is not None:
                self._linked.close()

    def __repr__(self) -> str:
        return f"<Cancellable {type(self._db).__name__} token={self._token!r}>"


def _engine_of(db: AsyncSession | AsyncConnection) -> Engine | None:
    bind = db.bind if isinstance(db, AsyncSession) else db
    if isinstance(bind, AsyncEngine | AsyncConnection):
        return bind.sync_engine
    return None


async def _rollback(db: AsyncSession | AsyncConnection) -> None:
    """Roll back in a task of its own, which a cancellation arriving now cannot cut short and
    which is over before that cancellation goes on (see ``finish``)."""
    task = asyncio.ensure_future(db.rollback())
    cancelled = await finish(task)
    try:
        task.result()
    except Exception:
        # The cancellation is the news; a connection that cannot roll back is invalidated by
        # SQLAlchemy and the pool discards it, which is all we could do here anyway.
        logger.warning("rollback after cancellation failed", exc_info=True)
    if cancelled is not None:
        raise cancelled
