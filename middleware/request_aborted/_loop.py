"""The event loop a request runs on: asyncio's own, or a small stand-in for a trio run.

The library schedules a handful of things on "the loop": a callback soon or later, a future to
park a reader on, a task that watches the connection. Under asyncio those are the loop's own
methods, untouched and unwrapped, because every request pays for them. Under trio (anyio's trio
backend, ``hypercorn -k trio``) ``_trio.TrioLoop`` offers the same few methods for one
``trio.run``. Which one runs is found once per loop, not per request: the callers cache what
``running_loop()`` returned for as long as it ``is_running()``, and only when asyncio finds no loop
is trio consulted (and only if something already imported it).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol, TypeVar

__all__ = [
    "Handle",
    "Loop",
    "TaskHandle",
    "Waiter",
    "asyncio_only",
    "call_in_loop",
    "current_task",
    "is_cancellation",
    "running_loop",
    "running_loop_or_none",
    "settle_in_loop",
    "task_on",
    "wait_done",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Handle(Protocol):
    """A scheduled callback that can still be called off."""

    def cancel(self) -> None: ...


class Waiter(Protocol[T]):
    """A one-shot result a coroutine can await: ``asyncio.Future`` or its trio stand-in."""

    def done(self) -> bool: ...

    def set_result(self, result: T, /) -> None: ...

    def result(self) -> T: ...

    def __await__(self) -> Generator[Any, None, T]: ...


class TaskHandle(Protocol):
    """A task the library started and owns: it can be cancelled and asked whether it ended."""

    def cancel(self) -> Any: ...

    def done(self) -> bool: ...


class Loop(Protocol):
    """The part of ``asyncio.AbstractEventLoop`` the library uses."""

    def time(self) -> float: ...

    def is_running(self) -> bool: ...

    def call_soon(self, callback: Callable[..., object], *args: Any) -> Handle: ...

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> Any: ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Handle: ...

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> Handle: ...

    def create_future(self) -> Waiter[Any]: ...

    def create_task(
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> TaskHandle: ...


def running_loop() -> Loop:
    """The running asyncio loop, else the stand-in for the running trio run; ``RuntimeError``
    outside both, as ``asyncio.get_running_loop()`` raises it."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        loop = _trio_loop()
        if loop is None:
            raise
        return loop


def running_loop_or_none() -> Loop | None:
    """``running_loop()``, or ``None`` outside any event loop (in a plain thread)."""
    loop: Loop | None = asyncio._get_running_loop()
    if loop is None:
        loop = _trio_loop()
    return loop


def _trio_loop() -> Loop | None:
    """The running trio run's stand-in loop; ``None`` outside one. Never imports trio: code that
    runs under trio has imported it already."""
    if "trio" not in sys.modules:
        return None
    from ._trio import current_loop

    return current_loop()


def is_current(loop: Loop, thread: int | None = None) -> bool:
    """Whether ``loop`` runs here, now: in this thread, and this is its run.

    The package's one answer to "am I on this loop's thread?". Callers that know the thread the
    loop runs in, and know the loop runs there for as long as they ask (a request's source, for
    the request's lifetime), pass it: comparing thread ids answers without asking asyncio, whose
    check makes a ``getpid()`` system call on CPython 3.11.
    """
    if thread is not None:
        return thread == threading.get_ident()
    if asyncio._get_running_loop() is loop:
        return True
    return not isinstance(loop, asyncio.AbstractEventLoop) and _trio_loop() is loop


def call_in_loop(
    loop: Loop, callback: Callable[..., Any], *args: Any, thread: int | None = None
) -> None:
    """Call ``callback(*args)`` now when already on ``loop``, else hand it to the loop's thread.

    Tokens fire in the thread that cancels them (a timer, a worker thread, a signal handler), but
    futures, tasks and timers belong to their loop. Raises ``RuntimeError`` if the loop is closed
    (trio's ``RunFinishedError`` is one). ``thread``: the loop's thread, if known (``is_current``).
    """
    if is_current(loop, thread):
        callback(*args)
    else:
        loop.call_soon_threadsafe(callback, *args)


def settle_in_loop(loop: asyncio.AbstractEventLoop, future: asyncio.Future[T], value: T) -> None:
    """Give ``future`` its result on its loop, from any thread, unless it already has one.

    For a token's callback that wakes a waiter: the token may fire in any thread, and once the
    loop is closed nobody is waiting any more, so that is not an error.
    """
    with contextlib.suppress(RuntimeError):
        call_in_loop(loop, _set_result_once, future, value)


def _set_result_once(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)


# The task running on a given loop (``None`` if none runs), asked as CPython 3.12's C
# ``current_task(loop)`` asks it: 3.11's is a Python function around this same dictionary, a call
# more (~55 ns) on the path of every token scope. test_third_party_internals.py names this reach.
_current_tasks: dict[Any, asyncio.Task[Any]] | None = getattr(asyncio.tasks, "_current_tasks", None)
task_on: Callable[[Any], asyncio.Task[Any] | None] = (
    asyncio.current_task
    if sys.version_info >= (3, 12) or _current_tasks is None
    else _current_tasks.get
)


def current_task() -> object:
    """The running task (asyncio's or trio's), as an identity to compare; ``None`` outside one."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        if "trio" not in sys.modules:
            return None
        import trio

        return trio.lowlevel.current_task() if trio.lowlevel.in_trio_task() else None


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the backend's own cancellation (asyncio's or trio's), never to be kept."""
    if isinstance(exc, asyncio.CancelledError):
        return True
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(exc, trio.Cancelled)


async def wait_done(task: TaskHandle, within: float | None) -> bool:
    """Wait up to ``within`` seconds for ``task`` to end; whether it did."""
    if isinstance(task, asyncio.Future):
        done, _ = await asyncio.wait([task], timeout=within)
        return bool(done)
    from ._trio import TrioTask

    assert isinstance(task, TrioTask)
    return await task.wait(within)


def asyncio_only(feature: str) -> asyncio.AbstractEventLoop:
    """The running asyncio loop, for integrations built on asyncio drivers; under trio a clear
    ``RuntimeError`` that says so instead of asyncio's "no running event loop"."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        if _trio_loop() is not None:
            raise RuntimeError(
                f"{feature} runs on asyncio only: its drivers (asyncpg, psycopg, httpx's "
                "asyncio transport) need an asyncio event loop, and this is a trio run. The "
                "token, token.scope(), the middleware and ApplicationLifetime work under trio; "
                "see docs/hazards.md (trio)"
            ) from None
        raise
