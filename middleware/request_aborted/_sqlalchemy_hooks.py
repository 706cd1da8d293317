"""Engine and pool hooks that tie a ``cancellable`` block's token to the connections it uses.

The block publishes a ``Binding`` in a ContextVar; SQLAlchemy runs its sync core for an async
session in a greenlet that shares the task's context, so the hooks see the binding of whichever
block issued the statement, on whichever pooled connection the session happens to use.

Each DBAPI connection carries a ``Guard`` (``_sqlalchemy_guard``) in its pool record's ``info``;
when the token fires it interrupts the driver (``_sqlalchemy_drivers``) instead of cancelling the
task. The hooks here keep the guard informed - a statement starts, ends, fails; a transaction
commits; the connection goes back to the pool - and translate what comes back: the driver error
becomes ``OperationCancelled`` in ``handle_error``, where SQLAlchemy lets a handler choose the
exception *without* calling it a disconnect, so the connection goes back to the pool intact.
Before a connection is used again (next statement, commit, rollback, pool reset), any interrupt
still in flight is awaited, so it can never land on somebody else's statement. A checkout that has
to wait for a free connection waits on the binding's token too (``_sqlalchemy_poolwait``).
"""

from __future__ import annotations

import math
import weakref
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.util.concurrency import in_greenlet

from request_aborted import CancellationToken, DeadlineExceeded, OperationCancelled

from ._budget import budget_spent, deadline_reason
from ._sqlalchemy_drivers import (
    GuardedCursor,
    deadline_statement,
    is_interruption,
    lost_its_transaction,
)
from ._sqlalchemy_guard import GUARD_KEY, Binding, Guard, Refused, await_in_greenlet, guard_of
from ._sqlalchemy_pgcancel import close_side_canceller
from ._sqlalchemy_poolwait import make_waits_cancellable

__all__ = ["Binding", "Refused", "bound", "install"]

bound: ContextVar[Binding | None] = ContextVar("request_aborted.sqlalchemy", default=None)
_installed: weakref.WeakSet[Engine] = weakref.WeakSet()


def _before_cursor_execute(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
) -> None:
    binding = bound.get()
    guard = guard_of(conn, create=binding is not None)
    if guard is None:
        return
    guard.quiesce()
    if binding is None:
        guard.detach()  # used outside any block: a fire must not hit this statement
        return
    guard.attach(binding)
    guard.begin()
    reason = binding.token.reason
    if reason is not None:
        guard.end()
        raise Refused(reason)
    if guard.deadline_for is not binding and conn.dialect.name == "postgresql":
        _push_deadline(conn, guard, binding)


def _push_deadline(conn: Connection, guard: Guard, binding: Binding) -> None:
    remaining = binding.token.remaining()
    dbapi_connection: Any = conn.connection.dbapi_connection
    if remaining is None or getattr(dbapi_connection, "autocommit", False):
        return
    milliseconds = max(1, math.ceil(remaining * 1000))
    style = conn.dialect.paramstyle
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(
            deadline_statement(style), {"ms": milliseconds} if style == "named" else (milliseconds,)
        )
    finally:
        cursor.close()
    guard.deadline_for, guard.deadline_ms = binding, milliseconds


def _after_cursor_execute(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
) -> None:
    guard = guard_of(conn, create=False)
    if guard is None or not guard.running:
        return
    guard.end()
    binding = bound.get()
    inner = getattr(cursor, "_cursor", None)
    if binding is not None and getattr(cursor, "server_side", False) and inner is not None:
        cursor._cursor = GuardedCursor(inner, lambda op: guard.guarded(binding, op))


def _handle_error(context: ExceptionContext) -> BaseException | None:
    conn = context.connection
    guard = None if conn is None else guard_of(conn, create=False)
    if guard is not None and guard.running:
        guard.end()
    error = context.original_exception
    if isinstance(error, Refused):
        return OperationCancelled(error.reason)
    binding = bound.get()
    if binding is None or not is_interruption(error):
        return None
    token = binding.token
    reason = token.reason
    if (
        reason is None
        and guard is not None
        and guard.deadline_for is binding  # the timeout may be the budget we pushed
        and budget_spent(token)
    ):
        reason = _pushed_deadline_reason(token, guard.deadline_ms / 1000)
    if reason is None:
        return None  # somebody else's cancel (an admin, the session's own statement_timeout)
    # The connection stays in the pool, unless the interruption cut BEGIN itself: then it goes,
    # alone (the rest of the pool is fine).
    context.is_disconnect = _begin_was_cut(conn)
    context.invalidate_pool_on_disconnect = False
    return OperationCancelled(reason)


def _begin_was_cut(conn: Connection | None) -> bool:
    try:
        return conn is not None and lost_its_transaction(conn.connection)
    except Exception:  # closed or invalidated meanwhile: SQLAlchemy deals with it as it is
        return False


def _pushed_deadline_reason(token: CancellationToken, budget: float) -> BaseException:
    """The reason for a ``statement_timeout`` we pushed, once the budget it came from is spent.

    The server's timer starts with each statement, after the push, so it cannot fire before the
    token's deadline; when it wins the race anyway, the token is about to fire (``_budget``). A
    timeout while budget remains was the session's own, stricter one: not ours.
    """
    if in_greenlet():
        return await_in_greenlet(deadline_reason(token, budget))
    return token.reason or DeadlineExceeded(budget)  # a sync engine: nothing can wait here


def _on_commit(conn: Connection) -> None:
    try:
        guard = guard_of(conn, create=False)
        if guard is not None:
            guard.quiesce()
            guard.deadline_for = None
        binding = bound.get()
        reason = None if binding is None else binding.token.reason
        if reason is not None:
            # Refuse to start the point of no return; leave nothing open on the server either.
            conn.dialect.do_rollback(conn.connection)
            raise OperationCancelled(reason)
    except OperationCancelled:
        raise
    except BaseException:
        # Cut short here (a plain task.cancel() while we waited or rolled back): once this hook
        # raises, SQLAlchemy counts the transaction as over and would check the connection in
        # without a rollback, leaving the server "idle in transaction" with the work in it.
        # Invalidated, the connection is discarded, and the server rolls back when it closes.
        conn.invalidate()
        raise


def _on_rollback(conn: Connection) -> None:
    guard = guard_of(conn, create=False)
    if guard is not None:
        guard.quiesce()
        guard.deadline_for = None


def _on_reset(dbapi_connection: Any, connection_record: Any, reset_state: Any) -> None:
    _returned(connection_record)


def _on_checkin(dbapi_connection: Any, connection_record: Any) -> None:
    _returned(connection_record)


def _returned(record: Any) -> None:
    guard: Guard | None = record.info.get(GUARD_KEY) if record is not None else None
    if guard is not None:
        guard.quiesce()
        guard.detach()  # the next checkout belongs to somebody else's block
        guard.deadline_for = None


def _bound_token() -> CancellationToken | None:
    binding = bound.get()
    return None if binding is None else binding.token


def _on_dispose(engine: Engine) -> None:
    make_waits_cancellable(engine.pool, _bound_token)  # dispose() put a new pool in place
    if in_greenlet():
        await_in_greenlet(close_side_canceller(engine))


def install(engine: Engine) -> None:
    """Add the hooks to ``engine`` and its pool, once."""
    if engine in _installed:
        return
    event.listen(engine, "before_cursor_execute", _before_cursor_execute)
    event.listen(engine, "after_cursor_execute", _after_cursor_execute)
    event.listen(engine, "handle_error", _handle_error)
    event.listen(engine, "commit", _on_commit)
    event.listen(engine, "rollback", _on_rollback)
    event.listen(engine, "reset", _on_reset)
    event.listen(engine, "checkin", _on_checkin)
    event.listen(engine, "engine_disposed", _on_dispose)
    make_waits_cancellable(engine.pool, _bound_token)
    _installed.add(engine)
