"""Waits for a pooled connection that end when the bound token fires, or its budget runs out.

Under overload requests spend their time *waiting* for a connection, and a request whose client
left must not keep its place in that queue until ``pool_timeout`` (30 s by default). SQLAlchemy
offers no hook before a checkout waits, so the async pool's queue (``AsyncAdaptedQueuePool._pool``,
an ``AsyncAdaptedQueue``) is wrapped: a blocking ``get`` made inside a ``cancellable`` block races
the wait against the block's token and against the token's remaining budget (the same bound that
becomes ``statement_timeout`` once a statement runs).

The wait itself runs in a task of its own (``greenlet_spawn`` of the queue's own ``get``), so the
request's task is never cancelled and the pool code above us sees an ordinary exception:

* the token fires: the waiting task is cancelled, which ``asyncio.Queue.get`` handles by leaving
  the queue and passing any wake-up it got on to the next waiter; if it had already taken a
  connection, that connection is put back. Either way no slot is lost, and the checkout raises
  ``OperationCancelled(reason)`` before the pool counted anything (``QueuePool._do_get`` only
  touches its overflow counter after the queue said ``Empty``);
* the budget runs out first: the token's own reason if its timer catches up within a moment,
  else ``DeadlineExceeded``;
* ``pool_timeout`` comes first: ``Empty``, which the pool turns into its usual ``TimeoutError``;
* the caller is cancelled (``asyncio.timeout``, a task group): the same clean exit, then the
  ``CancelledError`` goes on.

It allocates only when a request really has to wait: a checkout that finds a connection free, or
that is made outside any block, is the queue's own ``get``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Any

from sqlalchemy.pool import AsyncAdaptedQueuePool, Pool
from sqlalchemy.util.concurrency import greenlet_spawn, in_greenlet
from sqlalchemy.util.queue import Empty, Full

from request_aborted import CancellationToken, OperationCancelled

from ._budget import deadline_reason
from ._loop import asyncio_only, settle_in_loop
from ._sqlalchemy_guard import await_in_greenlet, finish

__all__ = ["CancellableQueue", "make_waits_cancellable"]


class CancellableQueue:
    """Stands in for the async pool's queue; only a blocking ``get`` in a bound block differs."""

    def __init__(
        self,
        inner: Any,
        token_of: Callable[[], CancellationToken | None],
        give_back: Callable[[Any], None],
    ) -> None:
        self.inner = inner
        self._token_of = token_of
        self._give_back = give_back

    def __getattr__(self, name: str) -> Any:
        # maxsize, use_lifo, qsize(), put(), get_nowait()...: the pool's own queue answers.
        return getattr(self.inner, name)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        token = self._token_of() if block else None
        if token is None or not in_greenlet():
            return self.inner.get(block, timeout)
        reason = token.reason
        if reason is not None:
            raise OperationCancelled(reason)
        with contextlib.suppress(Empty):
            return self.inner.get_nowait()
        return await_in_greenlet(self._wait(token, pool_timeout=timeout))

    async def _wait(self, token: CancellationToken, *, pool_timeout: float | None) -> Any:
        loop = asyncio_only("request_aborted.sqlalchemy")
        fired: asyncio.Future[BaseException] = loop.create_future()
        registration = token.register(functools.partial(settle_in_loop, loop, fired))
        remaining = token.remaining()
        limit = pool_timeout if remaining is None else min(remaining, pool_timeout or remaining)
        getter = loop.create_task(greenlet_spawn(self.inner.get, True, None))
        try:
            await asyncio.wait((getter, fired), timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await self._give_up(getter)
            raise
        finally:
            registration.unregister()
        if getter.done() and not fired.done():
            return getter.result()
        await self._give_up(getter)
        if fired.done():
            raise OperationCancelled(fired.result())
        if remaining is not None and (pool_timeout is None or remaining < pool_timeout):
            raise OperationCancelled(await deadline_reason(token, remaining))
        raise Empty()

    async def _give_up(self, getter: asyncio.Task[Any]) -> None:
        """End the waiting task; hand back the connection it took, if it was quicker than us."""
        getter.cancel()
        cancelled = await finish(getter)
        if not getter.cancelled() and getter.exception() is None:
            record = getter.result()
            try:
                self.inner.put_nowait(record)
            except Full:
                # An overflow connection came back into the space our connection left: the pool
                # now has one too many, so ours goes as the pool's own return would send it
                # (closed, the overflow count lowered); dropping it lost a slot for good.
                await greenlet_spawn(self._give_back, record)
        if cancelled is not None:
            raise cancelled


def make_waits_cancellable(pool: Pool, token_of: Callable[[], CancellationToken | None]) -> bool:
    """Wrap ``pool``'s queue, once; ``False`` for pools that do not queue (Null, Static, sync)."""
    if not isinstance(pool, AsyncAdaptedQueuePool):
        return False
    queue = getattr(pool, "_pool", None)
    if queue is None or not callable(getattr(queue, "get", None)):
        return False  # a SQLAlchemy that moved its queue: waits stay as they were
    if not isinstance(queue, CancellableQueue):
        give_back = pool._do_return_conn  # put back, or close and lower the overflow if full
        pool._pool = CancellableQueue(queue, token_of, give_back)  # type: ignore[assignment]
    return True
