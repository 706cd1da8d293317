"""Cancellation tokens and their sources: .NET's model, spelled the Python way.

A ``CancellationTokenSource`` is the part that decides; its ``CancellationToken`` is the read-only
view handed to the code that does the work. Sources can be linked into trees: a child fires when any
parent fires, with that parent's reason, so a handler can add a tighter timeout to the request's
token without losing the information *why* the work stopped.

The hot path matters: the middleware builds one source per HTTP request, and most requests finish
without anyone looking at the token. So a source allocates its callback table, its token view and
its timer only when something asks for them. The middleware's per-request source (``_request``)
is a subclass; what it may touch is listed in ``CancellationTokenSource``'s docstring.

Imports go one way: ``_registration`` <- ``_token`` -> ``_scope`` (a token makes scopes; a scope
knows its source only through the protocols ``_registration`` and ``_scope`` declare).
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from types import TracebackType
from typing import Any, ClassVar, Self

from ._exceptions import CancellationRequested, DeadlineExceeded, OperationCancelled, describe
from ._loop import (
    Handle,
    Loop,
    Waiter,
    call_in_loop,
    is_current,
    running_loop,
    running_loop_or_none,
)
from ._registration import Callback, Registration
from ._scope import CriticalSection, TokenScope

__all__ = ["CancellationToken", "CancellationTokenSource", "Registration"]


class CancellationTokenSource:
    """Signals cancellation to every holder of its ``token``.

    ``cancel()`` is idempotent and the first reason wins. ``timeout`` (seconds) arms a timer at
    construction, as ``cancel_after()`` does later. Close the source (or use it as a context
    manager) when the work is done: that stops its timer and unlinks it from its parents, which is
    what keeps a long-lived parent from accumulating dead children.

    Protected surface, for subclasses (the middleware's per-request source) and for the package's
    registrations and scopes; nothing else of the source's internals is read outside this module:

    * ``_init_source(lock, loop, thread)``: what ``__init__`` does, for a subclass whose own
      ``__init__`` has other arguments. ``lock`` may be shared among sources (it guards a few
      dictionary operations and is never held while taking another lock); ``loop``/``thread``
      bind the source to the loop it lives on, which then serves its timers and scopes.
    * ``_observed(on_thread=False)`` hook: application code looked at the token for the first time
      (any thread; ``on_thread`` says the caller runs on the source's ``_thread``, as a held scope
      knows it does, and spares the hook asking). Called only while ``_unobserved`` is true,
      which a subclass sets to ask for it; the hook clears it (one call fewer on a path every
      observed request takes).
    * ``_cancelled()`` hook: the source has just fired; runs before the registered callbacks.
      Hooks are methods rather than stored callbacks because a bound method kept on its own
      instance is a reference cycle, and cycles are what the cyclic GC has to find.
    * ``_add(registration)`` / ``_remove(registration)``: the callback table, for ``Registration``
      and ``TokenScope`` (the ``Registry`` protocol); ``_add`` counts as observing the token.
    * ``_home_loop()``: the source's loop when called on its thread, for ``TokenScope``.
    * ``_scope``: the one ``TokenScope`` held directly instead of in the callback table, the
      common case of a request's token scoped on its own loop thread; only ``TokenScope`` writes
      it, and only on the source's ``_thread``. ``cancel()`` takes it (any thread) and fires it
      first. Readable by ``TokenScope`` for the same path: ``_loop``, ``_thread``, ``_reason``;
      ``_scope`` also by ``CriticalSection`` (it is held only for the current request, and
      critical sections find it there).
    * read-only for subclasses: ``_reason``, ``_cancelled_at``, ``_timer``, ``_parents``,
      ``_loop``, ``_thread``.
    """

    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_cancelled_at",
        "_lock",
        "_loop",
        "_own_deadline",
        "_parents",
        "_reason",
        "_scope",
        "_thread",
        "_timer",
        "_token",
        "_unobserved",
    )

    def __init__(self, timeout: float | None = None) -> None:
        self._init_source(threading.Lock())
        if timeout is not None:
            self.cancel_after(timeout)

    def _init_source(
        self, lock: threading.Lock, loop: Loop | None = None, thread: int | None = None
    ) -> None:
        self._reason: BaseException | None = None
        self._cancelled_at: float | None = None
        # Registration -> None: an insertion-ordered set with O(1) removal. Created on first use.
        self._callbacks: dict[Registration, None] | None = None
        # A scope on the source's own thread, when no other is active: set and cleared without
        # the lock or the table (a single reference, which cancel() swaps out under the lock;
        # the scope reads _reason after setting it, so one of the two always sees the other).
        self._scope: TokenScope | None = None
        self._lock = lock
        self._unobserved = False  # True while _observed() is still to be called (it clears it)
        # The loop, and the thread running it, when the source belongs to one (a request's):
        # timers and scopes then find them without asking asyncio (see _home_loop()).
        self._loop = loop
        self._thread = thread
        self._own_deadline: float | None = None
        self._parents: tuple[tuple[CancellationTokenSource, Registration], ...] = ()
        self._timer: Handle | threading.Timer | None = None
        self._token: weakref.ref[CancellationToken] | None = None

    @classmethod
    def linked(cls, *tokens: CancellationToken, timeout: float | None = None) -> Self:
        """Create a source that fires when any of ``tokens`` fires, or after ``timeout``.

        The child reports the reason of whichever fired first, and its deadline is the earliest of
        its own and its parents'. Close it when done, or the parents keep it registered.
        """
        source = cls(timeout=timeout)
        parents: list[tuple[CancellationTokenSource, Registration]] = []
        for token in tokens:
            parent = token._source
            if parent is None:
                continue
            parents.append((parent, parent.register(source._cancel_from_parent)))
            if source._reason is not None:
                break
        source._parents = tuple(parents)
        if source._reason is not None:
            # A parent had already fired (or the timeout was zero): cancel() ran before the
            # parents were recorded, so drop the registrations made on the earlier parents.
            source._unlink()
        return source

    @property
    def token(self) -> CancellationToken:
        """The read-only token to hand to the code that should stop when this source fires."""
        # A weak reference: a strong one would make source and token a reference cycle, and
        # every request's source (with whatever it references) garbage for the cyclic GC.
        cached = self._token
        token = None if cached is None else cached()
        if token is None:
            token = CancellationToken(self)
            self._token = weakref.ref(token)
        return token

    @property
    def is_cancellation_requested(self) -> bool:
        """Whether the source has fired, without counting as an observer of the token."""
        return self._reason is not None

    @property
    def reason(self) -> BaseException | None:
        """The reason the source fired with, or ``None``; does not count as observing the token."""
        return self._reason

    @property
    def cancelled_at(self) -> float | None:
        """When the source fired, in ``time.monotonic()`` seconds: how long did stopping take?"""
        return self._cancelled_at

    @property
    def registrations(self) -> int:
        """How many callbacks are registered and not yet run: a leak shows up here first."""
        callbacks = self._callbacks
        held = self._scope is not None
        return held if callbacks is None else len(callbacks) + held

    @property
    def deadline(self) -> float | None:
        """When the source fires by itself at the latest, in ``time.monotonic()`` seconds."""
        deadline = self._own_deadline
        for parent, _ in self._parents:
            theirs = parent.deadline
            if theirs is not None and (deadline is None or theirs < deadline):
                deadline = theirs
        return deadline

    def cancel(self, reason: BaseException | str | None = None) -> None:
        """Fire the token; later calls do nothing.

        Callbacks run here, in the calling thread, in the order they were registered. One that
        raises does not stop the others: their exceptions are raised together afterwards as an
        exception group.
        """
        if self._reason is not None:
            return
        if reason is None:
            reason = CancellationRequested()
        elif isinstance(reason, str):
            reason = CancellationRequested(reason)
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason
            self._cancelled_at = time.monotonic()
            callbacks, self._callbacks = self._callbacks, None
            scope, self._scope = self._scope, None
        self._stop_timer()
        self._unlink()
        self._cancelled()
        if scope is not None:  # entered before anything registered inside it: it goes first
            scope._source = None
            scope._fire(reason)  # only schedules the interruption: does not raise
        if not callbacks:
            return
        errors: list[BaseException] = []
        for registration in callbacks:
            registration._source = None
            try:
                registration._fire(reason)
            except BaseException as exc:  # deliberate: collected, raised together below
                errors.append(exc)
        if errors:
            raise BaseExceptionGroup("cancellation callbacks raised", errors)

    def cancel_after(self, seconds: float | None, reason: BaseException | None = None) -> None:
        """(Re)arm the timer to fire in ``seconds``; ``None`` disarms it.

        The reason defaults to ``DeadlineExceeded(seconds)``. With a running event loop the timer
        lives on the loop, asyncio's or trio's (call this from the loop's thread); without one, on
        a timer thread.
        """
        if self._reason is not None:
            return
        self._stop_timer()
        if seconds is None:
            self._own_deadline = None
            return
        if reason is None:
            reason = DeadlineExceeded(seconds)
        self._own_deadline = time.monotonic() + seconds
        if seconds <= 0:
            self.cancel(reason)
            return
        loop = self._home_loop()  # a request's, when on the request's thread: no need to ask
        if loop is None:
            loop = running_loop_or_none()
        if loop is None:
            timer = threading.Timer(seconds, self.cancel, (reason,))
            timer.daemon = True
            self._timer = timer
            timer.start()
        else:
            self._timer = loop.call_later(seconds, self.cancel, reason)

    def close(self) -> None:
        """Stop the timer and unlink from the parents; the token keeps its current state."""
        self._stop_timer()
        self._unlink()

    def register(self, callback: Callback) -> Registration:
        """Register ``callback(reason)``; it runs at once, here, if the source already fired."""
        registration = Registration(self, callback)
        reason = self._add(registration)
        if reason is not None:
            callback(reason)
        return registration

    def _add(self, registration: Registration) -> BaseException | None:
        """Register ``registration``; if the source has already fired, return the reason instead.

        Counts as observing the token.
        """
        if self._unobserved:
            self._observed()
        with self._lock:
            if self._reason is None:
                callbacks = self._callbacks
                if callbacks is None:
                    callbacks = self._callbacks = {}
                callbacks[registration] = None
                return None
        registration._source = None
        return self._reason

    def _remove(self, registration: Registration) -> bool:
        """Unregister ``registration``; whether it was still waiting for the source to fire."""
        with self._lock:
            callbacks = self._callbacks
            if callbacks is None:
                return False
            return callbacks.pop(registration, False) is None

    def _home_loop(self) -> Loop | None:
        """The loop this source lives on, when called on that loop's thread; else ``None``."""
        loop = self._loop
        if loop is None or not is_current(loop, self._thread):
            return None
        return loop

    def _cancel_from_parent(self, reason: BaseException) -> None:
        self.cancel(reason)

    def _observed(self, on_thread: bool = False) -> None:
        """Hook: application code looked at the token for the first time (any thread)."""
        self._unobserved = False

    def _cancelled(self) -> None:
        """Hook: the source has just fired; runs before the registered callbacks."""

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _unlink(self) -> None:
        parents, self._parents = self._parents, ()
        for _, registration in parents:
            registration.unregister()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {_state(self)}>"


class CancellationToken:
    """A read-only view of a source: observe it, never fire it.

    ``CancellationToken.NONE`` is the token that can never be cancelled, for callers that have no
    reason to stop (pass it deliberately, not "just for now").

    Protected, for ``TokenScope``: ``_source``, the source (``None`` for ``NONE``).
    """

    __slots__ = ("__weakref__", "_source")

    NONE: ClassVar[CancellationToken]

    def __init__(self, source: CancellationTokenSource | None) -> None:
        self._source = source

    @property
    def is_cancellation_requested(self) -> bool:
        """Whether the token has fired."""
        source = self._source
        if source is None:
            return False
        if source._unobserved:
            source._observed()
        return source._reason is not None

    @property
    def can_be_cancelled(self) -> bool:
        """Whether the token can ever fire (``False`` only for ``CancellationToken.NONE``)."""
        return self._source is not None

    @property
    def reason(self) -> BaseException | None:
        """Why the token fired, or ``None`` while it has not."""
        source = self._source
        if source is None:
            return None
        if source._unobserved:
            source._observed()
        return source._reason

    @property
    def deadline(self) -> float | None:
        """When the token fires by itself at the latest, in ``time.monotonic()`` seconds."""
        source = self._source
        return None if source is None else source.deadline

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or ``None`` without a deadline."""
        deadline = self.deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def raise_if_cancellation_requested(self) -> None:
        """Raise ``OperationCancelled`` with the reason if the token fired; safe from any thread."""
        reason = self.reason
        if reason is not None:
            raise OperationCancelled(reason)

    def register(self, callback: Callback) -> Registration:
        """Call ``callback(reason)`` when the token fires, in the thread that fires it.

        If the token has already fired the callback runs at once, before this returns. Keep the
        callback short and non-blocking; to resume a coroutine use ``wait()`` or ``scope()``.
        """
        source = self._source
        if source is None:
            return Registration(None, callback)
        return source.register(callback)

    async def wait(self) -> BaseException:
        """Wait until the token fires and return the reason (forever for ``NONE``)."""
        loop = running_loop()
        waiter: Waiter[BaseException] = loop.create_future()
        with self.register(lambda reason: _resolve_soon(loop, waiter, reason)):
            return await waiter

    def scope(self) -> TokenScope:
        """Interrupt the enclosed block at its next ``await`` once the token fires.

        ``async with token.scope():`` raises ``OperationCancelled`` carrying the reason when the
        token interrupted the block. Cancellations it did not cause (an outer ``task.cancel()``,
        ``asyncio.timeout``, an anyio cancel scope) pass through untouched.
        """
        return TokenScope(self)

    def critical_section(self, grace: float | None = None) -> CriticalSection:
        """Protect point-of-no-return work (a commit, a payment capture) from this token.

        Inside ``async with token.critical_section() as inner:`` the enclosing ``scope()`` blocks
        of the current task do not interrupt awaits; an interruption that comes due is delivered
        when the section ends. With ``grace`` the protection lasts at most that many seconds after
        the token fired. Pass ``inner`` to the work inside: it is ``NONE`` without a grace period,
        or a token that fires when the grace period runs out.
        """
        return CriticalSection(self, grace, CancellationTokenSource)

    def __repr__(self) -> str:
        source = self._source
        return f"<CancellationToken {'none' if source is None else _state(source)}>"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """A token is no data: FastAPI cannot fill a bare ``CancellationToken`` parameter.

        FastAPI asks pydantic for a schema of every parameter it does not recognise, and
        pydantic's failure surfaces as "Invalid args for response field!". Raised here, when
        the route is declared, the message says what to write instead.
        """
        raise TypeError(
            "a parameter annotated CancellationToken is not something FastAPI (or pydantic) can"
            " fill: annotate it RequestAborted (from request_aborted.fastapi import"
            " RequestAborted), the request's token as a dependency"
        )


CancellationToken.NONE = CancellationToken(None)


def _state(source: CancellationTokenSource) -> str:
    reason = source._reason
    if reason is not None:
        return f"[cancelled] reason={describe(reason)}"
    deadline = source.deadline
    if deadline is None:
        return "[active]"
    return f"[active] remaining={max(0.0, deadline - time.monotonic()):.3f}s"


def _resolve_soon(loop: Loop, waiter: Waiter[Any], value: Any) -> None:
    """Complete ``waiter`` on its own loop, whichever thread fired the token."""
    with contextlib.suppress(RuntimeError):  # a closed loop has nobody waiting any more
        call_in_loop(loop, _set_result_unless_done, waiter, value)


def _set_result_unless_done(waiter: Waiter[Any], value: Any) -> None:
    if not waiter.done():
        waiter.set_result(value)
