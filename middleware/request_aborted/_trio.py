"""What the library needs of an event loop, for a ``trio.run``: ``TrioLoop`` and its parts.

Imported only under trio (``_loop`` imports this module once trio runs), so asyncio never pays
for it. One ``TrioLoop`` per trio run, kept in a ``RunVar``: it owns one system task that runs
every timer and soon-callback of the run from a heap, the way asyncio's loop runs its
``call_later`` handles, so a request timeout costs a heap entry, not a task. Tasks the library
starts (the connection pump, background services) are system tasks too, each in its own cancel
scope: the run owns them (trio cancels system tasks when the main task ends), ``cancel()`` cancels
their scope, and none can outlive its run. A callback or task that raises is logged, never allowed
to crash the run (trio turns a system task's exception into ``TrioInternalError``).
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import logging
import math
import threading
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Final, Generic, TypeVar

import trio

__all__ = ["TrioFuture", "TrioLoop", "TrioTask", "current_loop"]

T = TypeVar("T")

logger = logging.getLogger("request_aborted")

_LOOP: trio.lowlevel.RunVar[TrioLoop] = trio.lowlevel.RunVar("request_aborted.loop")
_COMPACT_AT: Final = 256  # cancelled timers tolerated in the heap before it is rebuilt


def current_loop() -> TrioLoop | None:
    """The ``TrioLoop`` of the running trio run (created on first use); ``None`` outside one."""
    if not trio.lowlevel.in_trio_run():
        return None
    try:
        return _LOOP.get()
    except LookupError:
        loop = TrioLoop()
        _LOOP.set(loop)
        return loop


class TimerHandle:
    """A callback due at ``when`` on a ``TrioLoop``; ``cancel()`` it from the run's thread."""

    __slots__ = ("_args", "_callback", "_loop", "_seq", "cancelled", "when")

    def __init__(
        self,
        loop: TrioLoop,
        when: float,
        seq: int,
        callback: Callable[..., object],
        args: tuple[Any, ...],
    ) -> None:
        self._loop = loop
        self.when = when
        self._seq = seq  # callbacks due at the same time run in the order they were scheduled
        self._callback: Callable[..., object] | None = callback
        self._args = args
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._callback = None
            self._args = ()
            self._loop._dropped()

    def _run(self) -> None:
        callback = self._callback
        if callback is None:
            return
        self._callback = None
        try:
            callback(*self._args)
        except Exception:  # deliberate: as asyncio's loop does, log and carry on
            logger.exception("exception in callback %r", callback)
        finally:
            self._args = ()

    def __lt__(self, other: TimerHandle) -> bool:
        return (self.when, self._seq) < (other.when, other._seq)


class TrioLoop:
    """The asyncio-loop methods the library uses (``_loop.Loop``), for one trio run.

    Create it inside the run (``current_loop()`` does). Everything but ``call_soon_threadsafe``
    and ``is_running`` must be called from the run's thread, as with asyncio's loop.
    """

    __slots__ = ("_cancelled", "_heap", "_running", "_seq", "_sleeper", "_thread", "_token")

    def __init__(self) -> None:
        self._thread = threading.get_ident()
        self._token = trio.lowlevel.current_trio_token()
        self._heap: list[TimerHandle] = []
        self._cancelled = 0
        self._seq = itertools.count()
        self._sleeper: trio.CancelScope | None = None
        self._running = True
        trio.lowlevel.spawn_system_task(self._run_timers, name="request_aborted timers")

    def time(self) -> float:
        return trio.current_time()

    def is_running(self) -> bool:
        return self._running

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        handle = TimerHandle(self, when, next(self._seq), callback, args)
        heapq.heappush(self._heap, handle)
        sleeper = self._sleeper
        if sleeper is not None and when < sleeper.deadline:
            sleeper.deadline = when
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        return self.call_at(trio.current_time() + delay, callback, *args)

    def call_soon(self, callback: Callable[..., object], *args: Any) -> TimerHandle:
        # Before every timer, in order: asyncio's ready queue.
        return self.call_at(-math.inf, callback, *args)

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> None:
        """From any thread or a signal handler; ``RuntimeError`` once the run is over."""
        self._token.run_sync_soon(_guarded, callback, args)

    def create_future(self) -> TrioFuture[Any]:
        return TrioFuture()

    def create_task(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> TrioTask:
        return TrioTask(coro, name)

    def _dropped(self) -> None:
        self._cancelled += 1
        heap = self._heap
        if self._cancelled > _COMPACT_AT and self._cancelled * 2 > len(heap):
            heap[:] = [handle for handle in heap if not handle.cancelled]
            heapq.heapify(heap)
            self._cancelled = 0

    async def _run_timers(self) -> None:
        heap = self._heap
        try:
            while True:
                now = trio.current_time()
                while heap and heap[0].when <= now:
                    handle = heapq.heappop(heap)
                    if handle.cancelled:
                        self._cancelled -= 1
                    else:
                        handle._run()
                with trio.CancelScope(deadline=heap[0].when if heap else math.inf) as sleeper:
                    self._sleeper = sleeper
                    await trio.sleep_forever()
        finally:
            self._running = False
            self._sleeper = None
            heap.clear()

    def __repr__(self) -> str:
        return f"<TrioLoop running={self._running} timers={len(self._heap)}>"


def _guarded(callback: Callable[..., object], args: tuple[Any, ...]) -> None:
    try:
        callback(*args)
    except Exception:  # deliberate: a run_sync_soon callback that raises would crash the run
        logger.exception("exception in callback %r", callback)


class TrioFuture(Generic[T]):
    """A one-shot result to await in a trio task: the ``asyncio.Future`` subset the library uses."""

    __slots__ = ("_done", "_event", "_result")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._done = False
        self._result: T | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, result: T, /) -> None:
        if self._done:
            raise RuntimeError("the result is already set")
        self._result = result
        self._done = True
        self._event.set()

    def result(self) -> T:
        if not self._done:
            raise RuntimeError("the result is not set yet")
        return self._result  # type: ignore[return-value]

    def __await__(self) -> Generator[Any, None, T]:
        if not self._done:
            yield from self._event.wait().__await__()
        return self.result()


class TrioTask:
    """A coroutine run as a system task of the current trio run, in its own cancel scope."""

    __slots__ = ("_finished", "_name", "_scope")

    def __init__(self, coro: Coroutine[Any, Any, Any], name: str | None) -> None:
        self._scope = trio.CancelScope()
        self._finished = trio.Event()
        self._name = name or getattr(coro, "__qualname__", "task")
        # As asyncio.create_task does, the task runs in a copy of its creator's context.
        trio.lowlevel.spawn_system_task(
            self._run, coro, name=self._name, context=contextvars.copy_context()
        )

    async def _run(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            with self._scope:
                await coro
        except Exception:  # deliberate: a system task that raises would crash the whole run
            logger.exception("task %s failed", self._name)
        finally:
            self._finished.set()

    def cancel(self) -> bool:
        """Cancel the task at its next checkpoint (from the run's thread)."""
        if self._finished.is_set():
            return False
        self._scope.cancel()
        return True

    def done(self) -> bool:
        return self._finished.is_set()

    async def wait(self, within: float | None) -> bool:
        """Wait up to ``within`` seconds for the task to end; whether it did."""
        with trio.move_on_after(math.inf if within is None else within):
            await self._finished.wait()
        return self.done()

    def __repr__(self) -> str:
        return f"<TrioTask {self._name} {'done' if self.done() else 'running'}>"
