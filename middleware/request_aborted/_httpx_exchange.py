"""One request's journey through the inner transport, run in tasks the caller never cancels.

Every step of a request - sending it, each read of the response body, closing the response - runs
in a task of its own that sees the request's ``RequestAbort`` through a ContextVar. The caller
waits for the step *or* the token, whichever comes first:

* the token fires: the request is aborted at the socket (or, for transports that are not httpx's
  own, its step task is cancelled), the caller waits the fraction of a millisecond httpcore needs
  to release the socket, and raises ``OperationCancelled``;
* the caller itself is cancelled (``asyncio.timeout``, a task group, a token scope): the request is
  aborted the same way and the ``CancelledError`` goes on, but it never lands inside httpcore,
  where a native cancellation can leak pool connections (docs/hazards.md 13).

A step that is still unwinding is kept referenced until it ends, so nothing is garbage collected
mid-flight and no exception goes unretrieved.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeVar

from request_aborted import CancellationToken, OperationCancelled

from ._budget import budget_spent, deadline_reason
from ._httpx_abort import RequestAbort, current_abort
from ._loop import asyncio_only, settle_in_loop

__all__ = ["Exchange"]

T = TypeVar("T")
UNWIND: Final = 0.25  # a shut-down socket fails its read at once; this is only a safety cap
_END: Final = object()


class Exchange:
    """Runs the steps of one request; see the module docstring."""

    def __init__(
        self,
        token: CancellationToken,
        background: set[asyncio.Task[Any]],
        on_abort: Callable[[], None] | None,
        timeout_error: type[Exception],
    ) -> None:
        self._token = token
        self._timeout_error = timeout_error  # the httpx in use: httpx's or httpx2's
        self._on_abort = on_abort
        self._background = background
        self._abort = RequestAbort()
        self._context = contextvars.copy_context()
        self._context.run(current_abort.set, self._abort)
        self._loop = asyncio_only("request_aborted.httpx")
        self._fired: asyncio.Future[BaseException] = self._loop.create_future()
        self._registration = token.register(self._on_fire)

    def close(self) -> None:
        self._registration.unregister()

    async def step(self, start: Callable[[], Awaitable[T]]) -> T:
        """Run one step, raising ``OperationCancelled`` as soon as the token fires."""
        reason = self._token.reason
        if reason is not None:
            raise OperationCancelled(reason)
        task: asyncio.Task[T] = self._loop.create_task(_call(start), context=self._context)
        waiters: set[asyncio.Future[Any]] = {task, self._fired}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._stop(task)  # our caller is being cancelled: abort cleanly, then let it go on
            raise
        if not task.done():
            reason = self._fired.result()
            busy = self._abort.in_io
            self._stop(task)
            if busy:  # let httpcore finish releasing the socket before we report back
                await asyncio.wait({task}, timeout=UNWIND)
            raise OperationCancelled(reason)
        error = task.exception()
        if error is None:
            return task.result()
        raise await self._translate(error) from error

    async def cleanup(self, start: Callable[[], Awaitable[None]]) -> None:
        """Run a closing step to its end even if our caller is cancelled meanwhile."""
        task = self._loop.create_task(_call(start), context=self._context)
        self._keep(task)
        with contextlib.suppress(Exception):  # closing a broken response may fail; nothing to do
            await asyncio.shield(task)

    async def iterate(self, stream: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """The response body, one guarded step per chunk; closed through ``cleanup``."""
        iterator = stream.__aiter__()
        while True:
            chunk = await self.step(lambda: anext(iterator, _END))
            if chunk is _END:
                return
            assert isinstance(chunk, bytes)
            yield chunk

    async def _translate(self, error: BaseException) -> BaseException:
        token = self._token
        reason = token.reason
        if reason is None and isinstance(error, self._timeout_error) and budget_spent(token):
            reason = await deadline_reason(token)  # we capped the timeout to the budget
        if reason is None:
            return error
        return OperationCancelled(reason)

    def _stop(self, task: asyncio.Task[Any]) -> None:
        if self._on_abort is not None:
            self._abort.abort()
            self._on_abort()
        else:
            task.cancel()
        self._keep(task, abandoned=True)

    def _keep(self, task: asyncio.Task[Any], abandoned: bool = False) -> None:
        if task.done():
            self._finished(task, abandoned)
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda done: self._finished(done, abandoned))

    def _finished(self, task: asyncio.Task[Any], abandoned: bool) -> None:
        if task.cancelled() or task.exception() is not None:
            return  # an abandoned step's error is expected: retrieved, not logged
        result = task.result()
        if abandoned and hasattr(result, "aclose"):
            # The response arrived after we gave up on it: close it, or its connection stays
            # ACTIVE forever.
            self._keep(self._loop.create_task(result.aclose(), context=self._context))

    def _on_fire(self, reason: BaseException) -> None:
        settle_in_loop(self._loop, self._fired, reason)


async def _call(start: Callable[[], Awaitable[T]]) -> T:
    return await start()
