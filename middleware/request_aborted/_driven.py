"""A coroutine driven by hand on an asyncio loop, as ``asyncio.Task`` drives one, minus the Task.

The watcher's pump (``_watcher``) spends its life parked in the server's ``receive()`` and is
cancelled when the request ends, usually before it ever received anything. As an
``asyncio.Task`` it is a task object in asyncio's task set, a loop turn for its first step and
another for its cancellation, for work that is one pending future; and a task cannot take its
first step inside the call that starts it, where a reader waiting for that read wants it.
``Driven`` keeps only what a task keeps for that: the coroutine, its context, and the one future
(or ``call_soon`` handle) it waits on. Measured (BENCHMARKS.md, issue 17): under uvicorn about as
cheap as a task, which is C code where this is Python; what a pump costs is its work.

* The first step runs at once, inside ``start()`` (no loop turn), or at the loop's next turn
  (``start_soon()``, as a new task's would: cheaper for a coroutine often cancelled first).
* Later steps run from that future's done callback (or the ``call_soon`` of a bare ``yield``),
  in the context copied at the start, as a task's do.
* ``cancel()`` finishes the coroutine now, in the caller: it takes back its callback from the
  future it waits on, cancels that future (as ``Task.cancel`` cancels the future it waits on) and
  throws ``CancelledError`` in. A coroutine whose cleanup awaits is driven on by callbacks until it
  ends, as a cancelled task would be; nobody needs to await it, and when it ends nothing of it is
  left behind (no callback on a foreign future, no reference cycle).

What it is not: a task. ``asyncio.current_task()`` inside it is whichever task called (the first
step, a synchronous ``cancel()``) or ``None`` (steps from callbacks). Code that needs to *be* a task
(``asyncio.timeout``, anyio's cancel scopes, ``TaskGroup``) must not run here: see
``_watcher.hand_drivable`` for which ``receive()`` callables are known not to.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any

__all__ = ["Driven"]


class Driven:
    """One coroutine, stepped by hand on ``loop``; see the module docstring.

    Offers what ``_loop.TaskHandle`` asks of a task: ``cancel()`` and ``done()``.
    """

    __slots__ = (
        "_context",
        "_coro",
        "_fresh",
        "_handle",
        "_loop",
        "_must_cancel",
        "_stepping",
        "_waiting",
    )

    def __init__(self, coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> None:
        self._coro: Coroutine[Any, Any, Any] | None = coro  # None once it ended
        self._loop = loop
        self._context = contextvars.copy_context()
        self._waiting: asyncio.Future[Any] | None = None  # the future the coroutine awaits
        self._handle: asyncio.Handle | None = None  # the next step after a bare ``yield``
        self._stepping = False
        self._fresh = True  # no step has run yet
        self._must_cancel = False  # cancel() came while a step ran: cancel at its next pause

    def start(self) -> None:
        """Run the first step, here and now (kept out of ``__init__`` so that the owner holds
        this object before its coroutine first runs and can look at it)."""
        self._context.run(self._step, None)

    def start_soon(self) -> None:
        """Run the first step at the loop's next turn, as a new task's; ``cancel()`` before it
        only calls the turn off and closes the coroutine, which never ran."""
        self._handle = self._loop.call_soon(self._resume, context=self._context)

    def done(self) -> bool:
        """Whether the coroutine has ended."""
        return self._coro is None

    def cancel(self) -> bool:
        """Finish the coroutine now by throwing ``CancelledError`` in; ``False`` if it had ended.

        From inside one of its own steps (a callback the step set off called back), the
        coroutine is running and cannot be thrown into: it is cancelled where it next pauses.
        """
        if self._coro is None:
            return False
        if self._stepping:
            self._must_cancel = True
            return True
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.remove_done_callback(self._wake)
            waiting.cancel()  # the awaited operation is over too, as with Task.cancel()
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
        if self._fresh:
            coro, self._coro = self._coro, None
            coro.close()  # never ran: nothing to clean up, nothing to throw into
            return True
        self._context.run(self._step, asyncio.CancelledError())
        return True

    def _wake(self, future: asyncio.Future[Any]) -> None:
        if future is not self._waiting:
            # Scheduled before cancel() could take it back, and cancel() has thrown in since:
            # the coroutine no longer waits for this future (whose error is then nobody's).
            if not future.cancelled():
                future.exception()
            return
        self._waiting = None
        try:
            future.result()
        except BaseException as exc:  # deliberate: the awaited outcome goes into the coroutine
            self._step(exc)
        else:
            self._step(None)

    def _resume(self, exc: BaseException | None = None) -> None:
        self._handle = None
        self._step(exc)

    def _step(self, exc: BaseException | None) -> None:
        coro = self._coro
        if coro is None:
            return
        if self._must_cancel and exc is None:
            exc = asyncio.CancelledError()
        self._must_cancel = False
        self._fresh = False
        self._stepping = True
        try:
            result = coro.send(None) if exc is None else coro.throw(exc)
        except (StopIteration, asyncio.CancelledError):
            self._coro = None
            return
        except (KeyboardInterrupt, SystemExit):
            self._coro = None
            raise
        except BaseException as error:  # deliberate: reported as a task's unretrieved error is
            self._coro = None
            self._loop.call_exception_handler(
                {"message": "a hand-driven coroutine raised", "exception": error}
            )
            return
        finally:
            self._stepping = False
            # A thrown exception that came back out holds this frame in its traceback, and
            # this frame holds it: a reference cycle per cancelled pump, unless dropped.
            exc = None
        self._pause(result)

    def _pause(self, result: Any) -> None:
        """Arrange the next step for what the coroutine yielded, as ``Task.__step`` does."""
        if getattr(result, "_asyncio_future_blocking", None):
            result._asyncio_future_blocking = False
            result.add_done_callback(self._wake, context=self._context)
            self._waiting = result
            if self._must_cancel and result.cancel():
                self._must_cancel = False  # the cancelled future's callback brings it in
        elif result is None:  # a bare yield (asyncio.sleep(0)): step again at the next turn
            self._handle = self._loop.call_soon(self._resume, context=self._context)
        else:
            message = f"a hand-driven coroutine yielded {result!r}, which is not a future"
            self._handle = self._loop.call_soon(
                self._resume, RuntimeError(message), context=self._context
            )
