"""Per-connection cancellation state: what runs on a pooled connection and who may stop it.

A ``Binding`` is one ``cancellable`` block. A ``Guard`` lives in a DBAPI connection's pool record
for as long as the connection does; while a block uses the connection, the guard is registered on
that block's token. It counts statements (and streamed fetches) so an interrupt is only ever sent
while the statement it was meant for is still running, repeats the interrupt until that statement
ends, and lets the connection's next user wait (``quiesce``) until no interrupt is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, Final, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.util.concurrency import in_greenlet

from request_aborted import CancellationToken, Registration

from ._loop import asyncio_only, call_in_loop
from ._sqlalchemy_drivers import Interrupter, interrupter_for
from ._sqlalchemy_pgcancel import side_canceller

try:
    from sqlalchemy.util import await_ as _await
except ImportError:  # SQLAlchemy 2.0 spells it await_only
    from sqlalchemy.util import await_only as _await

__all__ = ["GUARD_KEY", "Binding", "Guard", "Refused", "await_in_greenlet", "guard_of"]

_T = TypeVar("_T")
GUARD_KEY: Final = "request_aborted.guard"
MAX_INTERRUPTS: Final = 25
MAX_RETRY_DELAY: Final = 0.25

await_in_greenlet = _await


class Refused(Exception):
    """Internal: a statement was not started because the token had fired (converted on the way)."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(reason)
        self.reason = reason


class Binding:
    """One ``cancellable`` block: its token and the guards of the connections it touched."""

    __slots__ = ("guards", "token")

    def __init__(self, token: CancellationToken) -> None:
        self.token = token
        self.guards: set[Guard] = set()

    async def release(self) -> None:
        """Detach from every connection and wait for interrupts still in flight."""
        guards, self.guards = self.guards, set()
        stoppers = []
        for guard in guards:
            if guard.binding is self:
                guard.detach()
            if guard.stopper is not None and not guard.stopper.done():
                stoppers.append(guard.stopper)
        if stoppers:
            waiting = asyncio.gather(*stoppers, return_exceptions=True)
            cancelled = await finish(waiting)
            if cancelled is not None:
                raise cancelled


async def finish(task: asyncio.Future[Any]) -> asyncio.CancelledError | None:
    """Wait for ``task`` to end even if this task is cancelled meanwhile; return that cancellation.

    Clean-up on a connection (a rollback, an interrupt in flight) must be over before whoever
    catches the cancellation hands the connection back to the pool: ``asyncio.shield`` alone lets
    the cancellation through at once, the clean-up goes on in the background, and the pool can
    check the connection in, or out to the next request, mid-clean-up. Seen here: a connection
    left ``idle in transaction`` holding a cancelled request's INSERT. The wait is as long as the
    clean-up, one round trip; the caller re-raises the cancellation afterwards.
    """
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError as exc:
            cancelled = exc
    return cancelled


class Guard:
    """Per-connection state: the running operation, the bound token, the interrupt in flight."""

    __slots__ = (
        "__weakref__", "binding", "deadline_for", "deadline_ms", "ended", "interrupter", "loop",
        "registration", "running", "seq", "stopper",
    )  # fmt: skip

    def __init__(self, interrupter: Interrupter | None) -> None:
        self.interrupter = interrupter
        self.binding: Binding | None = None
        self.registration: Registration | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.running = 0
        self.seq = 0
        self.ended: asyncio.Future[None] | None = None
        self.stopper: asyncio.Task[None] | None = None
        self.deadline_for: Binding | None = None
        self.deadline_ms = 0

    def attach(self, binding: Binding) -> None:
        if self.binding is binding:
            return
        self.detach()
        self.binding = binding
        self.loop = asyncio_only("request_aborted.sqlalchemy")
        binding.guards.add(self)
        self.registration = binding.token.register(self._on_fire)

    def detach(self) -> None:
        registration, self.registration = self.registration, None
        if registration is not None:
            registration.unregister()
        binding, self.binding = self.binding, None
        if binding is not None:
            binding.guards.discard(self)

    def begin(self) -> None:
        self.seq += 1
        self.running = self.seq

    def end(self) -> None:
        self.running = 0
        ended, self.ended = self.ended, None
        if ended is not None and not ended.done():
            ended.set_result(None)

    def quiesce(self) -> None:
        """From SQLAlchemy's sync code: wait until no interrupt of ours is in flight."""
        stopper = self.stopper
        if stopper is not None and not stopper.done() and in_greenlet():
            _await(asyncio.shield(stopper))

    async def guarded(self, binding: Binding, operation: Awaitable[_T]) -> _T:
        """Run a streamed fetch as an interruptible operation of ``binding``."""
        if self.binding is not binding:  # the block is over: plain fetch
            return await operation
        reason = binding.token.reason
        if reason is not None:
            if asyncio.iscoroutine(operation):
                operation.close()  # never started: no "coroutine was never awaited" warning
            raise Refused(reason)
        stopper = self.stopper
        if stopper is not None and not stopper.done():
            await asyncio.shield(stopper)
        self.begin()
        try:
            return await operation
        finally:
            self.end()

    def _on_fire(self, reason: BaseException) -> None:
        # Runs in whichever thread fired the token; the interrupt itself belongs on our loop.
        loop = self.loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop runs nothing on this connection
            call_in_loop(loop, self._fire)

    def _fire(self) -> None:
        if self.binding is None or not self.running or self.interrupter is None:
            return  # idle connections need nothing: the next statement is refused at its start
        if self.stopper is None or self.stopper.done():
            assert self.loop is not None
            self.stopper = self.loop.create_task(self._stop(self.running))

    async def _stop(self, seq: int) -> None:
        interrupter = self.interrupter
        assert interrupter is not None and self.loop is not None
        delay = interrupter.first_retry
        for _ in range(MAX_INTERRUPTS):
            if self.running != seq:
                return
            await interrupter.interrupt()
            if self.running != seq:
                return
            # Interrupts that arrive before the statement reaches the server are lost: repeat.
            ended = self.ended
            if ended is None:
                ended = self.ended = self.loop.create_future()
            await asyncio.wait({ended}, timeout=delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)


def guard_of(conn: Connection, *, create: bool) -> Guard | None:
    try:
        info = conn.info
        guard: Guard | None = info.get(GUARD_KEY)
        if guard is None and create:
            engine = conn.engine
            canceller = side_canceller(engine)
            if canceller is not None:
                canceller.warm_up()
            interrupter = interrupter_for(
                conn.connection.driver_connection, lambda: side_canceller(engine)
            )
            guard = info[GUARD_KEY] = Guard(interrupter)
    except Exception:  # an invalidated or closed connection: nothing to guard
        return None
    return guard
