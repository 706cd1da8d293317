"""The third-party internals the integrations reach into are still where the library expects them.

No public API offers what these do (a checkout wait that can leave the queue, fetches of a
streamed result that see the token, a network backend under httpx's pool, a cancel request on
asyncpg's own connection). Each reach has a fallback that keeps requests working, but quietly
worse: a pool wait that ignores the token, a stream that fetches on, an httpx request cancelled
instead of aborted at its socket (the pool-slot leak of docs/hazards.md 13), an asyncpg connection
terminated instead of its statement cancelled. These tests name each internal, so the release that
moves one fails here by name instead of shipping a slower, leakier library.
The servers' internals (``_servers``) have their own, against running servers:
``tests/request_aborted/test_servers.py`` and ``tests/e2e/test_server_transports.py``.
"""

from __future__ import annotations

import asyncio
import inspect
from types import ModuleType

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from request_aborted import CancellationTokenSource
from request_aborted._httpx_abort import AbortableBackend, install_backend
from request_aborted._httpx_flavour import Flavour
from request_aborted._loop import task_on
from request_aborted._sqlalchemy_drivers import GuardedCursor
from request_aborted._sqlalchemy_poolwait import CancellableQueue, make_waits_cancellable
from request_aborted.sqlalchemy import cancellable, install_cancellation


def test_sqlalchemys_async_pool_queue_can_be_wrapped_and_gives_connections_back() -> None:
    engine = create_async_engine("sqlite+aiosqlite://", poolclass=AsyncAdaptedQueuePool)
    pool = engine.sync_engine.pool

    assert make_waits_cancellable(pool, lambda: None), "AsyncAdaptedQueuePool._pool moved"
    assert isinstance(pool._pool, CancellableQueue)  # type: ignore[attr-defined]
    assert callable(pool._do_return_conn)
    asyncio.run(engine.dispose())


def test_sqlalchemys_streamed_result_has_its_drivers_cursor_wrapped() -> None:
    # _sqlalchemy_hooks replaces ``_cursor`` of SQLAlchemy's server-side cursor adapter, so that
    # the fetches of a streamed result check the token.
    async def main() -> object:
        engine = create_async_engine("sqlite+aiosqlite://")
        install_cancellation(engine)
        try:
            async with engine.connect() as conn, cancellable(conn, CancellationTokenSource().token):
                result = await conn.stream(text("SELECT 1"))
                adapter = result._real_result.cursor  # type: ignore[attr-defined]
                inner = getattr(adapter, "_cursor", None)
                await result.close()
                return inner
        finally:
            await engine.dispose()

    assert isinstance(asyncio.run(main()), GuardedCursor), "the adapter's _cursor moved"


def test_the_task_running_on_a_loop_is_found_where_token_scopes_look_for_it() -> None:
    # _loop.task_on: on CPython 3.11, asyncio's dictionary of running tasks, read directly (the
    # Python-level current_task() around it costs a call per token scope); 3.12's C version after.
    async def main() -> tuple[object, object, object]:
        idle = asyncio.new_event_loop()
        try:
            return task_on(asyncio.get_running_loop()), asyncio.current_task(), task_on(idle)
        finally:
            idle.close()

    found, running, elsewhere = asyncio.run(main())
    assert found is running is not None, "asyncio.tasks._current_tasks moved"
    assert elsewhere is None


def test_asyncpg_still_sends_cancel_requests_through_its_own_connection() -> None:
    cancel = getattr(asyncpg.Connection, "_cancel_current_command", None)
    assert callable(cancel), "asyncpg.Connection._cancel_current_command is gone"
    assert "waiter" in inspect.signature(cancel).parameters


def test_httpx_transports_take_an_abortable_network_backend(hx: ModuleType) -> None:
    flavour = Flavour.of(hx)
    transport = hx.AsyncHTTPTransport()

    assert install_backend(transport, flavour.httpcore), "httpx's transport _pool moved"
    assert isinstance(transport._pool._network_backend, AbortableBackend)


def test_httpcore_pool_requests_wait_on_an_event_a_queued_abort_can_set(hx: ModuleType) -> None:
    # _httpx_abort.leave_queue reads the pool's ``_requests`` and sets a queued request's
    # ``_connection_acquired`` so that it leaves the queue without a cancellation.
    core = Flavour.of(hx).httpcore
    pool = core.AsyncConnectionPool()
    assert isinstance(pool._requests, list)
    request = core.Request("GET", "http://127.0.0.1/")
    pool_request = core._async.connection_pool.AsyncPoolRequest(request)
    assert pool_request.request is request
    assert pool_request.is_queued()
    assert callable(pool_request._connection_acquired.set)
