"""Binding a token to a block of code: ``token.scope()`` and ``token.critical_section()``.

The scope is modelled on CPython's ``asyncio.timeouts.Timeout``: it records ``task.cancelling()``
on entry, cancels the task when the token fires, and on exit converts only the cancellation it
caused (``uncancel()`` brings the count back to where it was) into ``OperationCancelled``. Anyone
else's cancellation - an outer ``task.cancel()``, ``asyncio.timeout``, an anyio cancel scope -
passes through untouched.

The task is always cancelled from a loop callback, never from inside the task itself: a token fired
by the block's own code then interrupts the *next* await rather than leaving a stale pending
cancellation behind if the block ends first. Tokens fired from other threads reach the loop through
``call_soon_threadsafe``.

Under trio there is no ``Task.cancel()``: the scope enters a ``trio.CancelScope`` of its own around
the block and cancels that, and on exit converts only what that cancel scope caught. An outer
cancel scope's cancellation is the outer scope's business and passes through, as under asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import sys
from collections.abc import Callable
from contextvars import ContextVar, Token
from threading import get_ident
from types import TracebackType
from typing import TYPE_CHECKING, Final, NoReturn, Self

from ._current import current
from ._exceptions import OperationCancelled
from ._loop import Handle, Loop, call_in_loop, current_task, running_loop, task_on
from ._registration import Registration

if TYPE_CHECKING:
    # Annotations only: at run time this module never imports _token (which imports it).
    import trio

    from ._token import CancellationToken, CancellationTokenSource

__all__ = ["CriticalSection", "TokenScope"]


class _State(enum.Enum):
    CREATED = "created"
    ENTERED = "active"
    CANCELLING = "cancelling"
    EXITED = "finished"


# The states as module constants: reading an Enum member off its class costs ~70 ns on CPython
# 3.11 (a descriptor), a global ~10 ns, and a scope reads four per enter and exit.
_CREATED: Final = _State.CREATED
_ENTERED: Final = _State.ENTERED
_CANCELLING: Final = _State.CANCELLING
_EXITED: Final = _State.EXITED

# The innermost active scope of the running context; critical sections walk it outwards.
_innermost: ContextVar[TokenScope | None] = ContextVar("request_aborted.scope", default=None)


class TokenScope(Registration):
    """Interrupts the enclosed block when its token fires; see ``CancellationToken.scope()``.

    A scope is its own registration on the token's source, so entering one allocates nothing
    else: handlers enter one per awaited call, on every request.
    """

    __slots__ = (
        "_cancelling",
        "_caught",
        "_context",
        "_delay",
        "_handle",
        "_loop",
        "_outer",
        "_pending",
        "_reason",
        "_shields",
        "_state",
        "_task",
        "_token",
        "_trio_scope",
    )

    _source: CancellationTokenSource | None  # a scope registers on a token's source only

    # Set when entered (so not in __init__: a scope is made per awaited call, every write
    # counts); read only once entered.
    _task: object  # the asyncio task, or the trio task
    _loop: Loop | None
    _cancelling: int
    _outer: TokenScope | None
    # Set by _fire(), before the state can become CANCELLING.
    _reason: BaseException

    def __init__(self, token: CancellationToken, *, delay: float | None = None) -> None:
        self._source = None  # set while registered (_callback stays unset: a scope is its own)
        self._token = token
        self._delay = delay
        self._state = _CREATED
        self._trio_scope: trio.CancelScope | None = None  # under trio: what the scope cancels
        self._handle: Handle | None = None
        self._context: Token[TokenScope | None] | None = None
        self._shields = 0
        self._pending = False
        self._caught = False

    @property
    def cancelled_caught(self) -> bool:
        """Whether this scope interrupted its block (the name anyio uses for the same fact)."""
        return self._caught

    async def __aenter__(self) -> Self:
        if self._state is not _CREATED:
            raise RuntimeError("a token scope can be entered only once")
        source = self._token._source
        request: object = current.get(None)
        if (
            source is not None
            and source._scope is None
            and request is source
            and source._thread == get_ident()
        ):
            # The common case: the current request's token, on the request's own thread, no
            # other scope of it active. The request holds this scope directly (no lock, no
            # callback table, and not in the chain of scopes: critical sections find it through
            # the current request), and the task is asked of the request's loop (_loop.task_on:
            # no getpid(), which asyncio.current_task() makes on CPython 3.11). None if the loop
            # was replaced since, or is a trio run's stand-in: then the general path below.
            loop = source._loop
            task = task_on(loop)
            if task is not None:
                self._task = task
                self._loop = loop
                self._cancelling = task.cancelling()
                self._state = _ENTERED
                if source._unobserved:
                    source._observed(True)  # on the source's thread: asked above
                self._source = source
                source._scope = self
                # Read after setting _scope: a cancel() in another thread either takes this
                # scope (and fires it) or has set _reason before we read it here.
                reason = source._reason
                if reason is not None:
                    self._refuse(reason)
                return self
        return await self._enter(source)

    async def _enter(self, source: CancellationTokenSource | None) -> Self:
        task = None
        home = None if source is None else source._home_loop()
        if home is not None:
            task = task_on(home)
        if task is None:
            try:
                task = asyncio.current_task()
            except RuntimeError:  # no asyncio loop: trio's, or none at all
                task = None
            if task is None:
                self._enter_trio()
        if task is not None:
            self._task = task
            self._loop = home if home is not None else task.get_loop()
            self._cancelling = task.cancelling()
        self._state = _ENTERED
        if source is None:
            return self
        self._outer = _innermost.get()
        self._context = _innermost.set(self)
        self._source = source
        reason = source._add(self)
        if reason is None:
            # Read the source, not our own state: a thread may be firing the token right now,
            # and whether its callback has reached us yet is a race. _schedule() then finds the
            # scope exited and does nothing.
            reason = source.reason
        if reason is not None:  # the token has already fired: do not even start
            self._refuse(reason)
        return self

    def _refuse(self, reason: BaseException) -> NoReturn:
        self._state = _EXITED
        self._release()
        trio_scope = self._trio_scope
        if trio_scope is not None:
            trio_scope.__exit__(None, None, None)
        raise OperationCancelled(reason)

    def _enter_trio(self) -> None:
        # asyncio found no loop here: this is a trio task (then trio is imported), or no task.
        trio = sys.modules.get("trio")
        if trio is None or not trio.lowlevel.in_trio_task():
            raise RuntimeError("token.scope() must be used inside an asyncio or trio task")
        from ._trio import current_loop

        self._task = trio.lowlevel.current_task()
        self._loop = current_loop()
        trio_scope = self._trio_scope = trio.CancelScope()
        trio_scope.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state = self._state
        self._state = _EXITED
        source = self._source  # _release(), spelled out: every scope's exit runs this
        if source is not None:
            self._source = None
            if source._scope is self:  # held directly (see __aenter__): on the source's thread
                source._scope = None
                # Still held, so never fired (cancel() takes the scope before firing it): no
                # interruption scheduled or delivered, no context variable, no trio scope.
                return
            source._remove(self)
        handle = self._handle
        if handle is not None:
            self._handle = None
            handle.cancel()
        context = self._context
        if context is not None:
            self._context = None
            _innermost.reset(context)
        trio_scope = self._trio_scope
        if trio_scope is not None:
            # Exit the cancel scope first: it swallows the Cancelled it caught (its own only) and
            # re-raises anything else. A block that ended before reaching a checkpoint after we
            # cancelled it was not interrupted: cancelled_caught says which.
            trio_scope.__exit__(exc_type, exc, tb)
            if trio_scope.cancelled_caught and state is _CANCELLING:
                self._caught = True
                raise OperationCancelled(self._reason) from exc
            return
        if state is not _CANCELLING:
            return
        assert isinstance(self._task, asyncio.Task)
        if (
            self._task.uncancel() <= self._cancelling
            and exc_type is not None
            and issubclass(exc_type, asyncio.CancelledError)
        ):
            self._caught = True
            raise OperationCancelled(self._reason) from exc

    def _release(self) -> None:
        source = self._source
        if source is not None:  # unregister(), spelled out: every scope's exit runs this
            self._source = None
            if source._scope is self:  # held directly (see __aenter__): on the source's thread
                source._scope = None
            else:
                source._remove(self)
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
        context, self._context = self._context, None
        if context is not None:
            _innermost.reset(context)

    def _fire(self, reason: BaseException) -> None:
        # The source calls this as it would a plain registration's callback: in whichever thread
        # fired the token, possibly inside this very task (even inside _add() in __aenter__,
        # which then refuses to start the block).
        self._reason = reason
        loop = self._loop
        assert loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed; the block is long gone
            call_in_loop(loop, self._schedule)

    def _schedule(self) -> None:
        if self._state is not _ENTERED or self._handle is not None:
            return
        loop = self._loop
        assert loop is not None
        if self._delay:
            self._handle = loop.call_later(self._delay, self._interrupt)
        else:
            self._handle = loop.call_soon(self._interrupt)

    def _interrupt(self) -> None:
        self._handle = None
        if self._state is not _ENTERED:
            return
        if self._shields:
            self._pending = True
            return
        self._state = _CANCELLING
        trio_scope = self._trio_scope
        if trio_scope is not None:
            trio_scope.cancel()
            return
        assert isinstance(self._task, asyncio.Task)
        self._task.cancel()

    def _shield(self) -> None:
        self._shields += 1

    def _unshield(self) -> None:
        self._shields -= 1
        if self._shields == 0 and self._pending:
            self._pending = False
            loop = self._loop
            assert loop is not None
            if self._state is _ENTERED and self._handle is None:
                self._handle = loop.call_soon(self._interrupt)

    def __repr__(self) -> str:
        return f"<TokenScope [{self._state.value}] token={self._token!r}>"


class CriticalSection:
    """Holds off the current task's token scopes; see ``CancellationToken.critical_section()``."""

    __slots__ = ("_grace", "_grace_source", "_new_source", "_registration", "_shielded", "_token")

    def __init__(
        self,
        token: CancellationToken,
        grace: float | None,
        new_source: Callable[[], CancellationTokenSource],
    ) -> None:
        self._token = token
        self._grace = grace
        self._new_source = new_source  # what the grace period's token comes from
        self._shielded: list[TokenScope] = []
        self._grace_source: CancellationTokenSource | None = None
        self._registration: Registration | None = None

    async def __aenter__(self) -> CancellationToken:
        task = current_task()
        scope = _innermost.get()
        while scope is not None:
            if scope._task is task and scope._state is _ENTERED:
                scope._shield()
                self._shielded.append(scope)
            scope = scope._outer
        # A scope of the current request's token held by the request is not in the chain (see
        # TokenScope.__aenter__): it is found through the request, the only place it can be.
        held = getattr(current.get(None), "_scope", None)
        if isinstance(held, TokenScope) and held._task is task and held._state is _ENTERED:
            held._shield()
            self._shielded.append(held)
        if self._grace is None or self._token._source is None:
            return type(self._token).NONE
        loop = running_loop()
        grace = self._grace
        inner = self._grace_source = self._new_source()
        inner.register(lambda _: loop.call_soon_threadsafe(self._lift))

        def start_grace(reason: BaseException) -> None:
            def arm() -> None:
                if self._grace_source is inner:  # not when the section ended in the meantime
                    inner.cancel_after(grace, reason)

            call_in_loop(loop, arm)

        self._registration = self._token.register(start_grace)
        return inner.token

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        registration, self._registration = self._registration, None
        if registration is not None:
            registration.unregister()
        source, self._grace_source = self._grace_source, None
        if source is not None:
            source.close()
        self._lift()

    def _lift(self) -> None:
        shielded, self._shielded = self._shielded, []
        for scope in shielded:
            scope._unshield()
