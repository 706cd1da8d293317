"""Minimum data rates: a client too slow to read the response, or to send its body, is a reason.

Kestrel's ``MinResponseDataRate`` and ``MinRequestBodyDataRate`` for ASGI. A client that stops
reading leaves the server's ``send()`` blocked on TCP backpressure, with whatever the handler holds
(a cursor, a pooled connection) held for as long as the request's timeout allows; a client that
trickles its body does the same to a handler reading it. With a minimum rate the token fires with
``ClientTooSlow`` instead, the work stops, and the connection is closed.

The rules are Kestrel's:

* **send**: time is counted only while a ``send()`` of a body chunk is blocked, that is while the
  server waits for the client to read. Such a wait may last ``max(grace, size / rate)``, where
  ``size`` is the chunk plus the one before it (the server may still be flushing that one: uvicorn
  blocks a ``send()`` *before* writing its chunk, until the previous ones drained). A ``send()``
  that returns at once (the socket took it) counts nothing, so a client that reads fast but pauses
  between chunks is never cut, and a stalled reader is cut at most that long after the socket
  buffers filled up. (Kestrel also carries deadlines over from earlier writes; an ASGI request has
  one ``send()`` at a time, and on loopback the kernel's buffers take megabytes at once, which
  would push a stalled reader's cut hours away.)
* **receive**: time is counted only while the handler waits in ``receive()`` for body bytes;
  once that time passes ``grace``, the bytes received divided by it must stay at or above the
  rate. A handler that is slow to read is never the client's fault.

Off unless configured: a request of a middleware without rates never reaches this module.

Closing the connection is a server fast path with a generic fallback (``_servers``):

* **uvicorn and gunicorn (the fast path)**: the connection's transport is aborted, which also ends
  a ``send()`` blocked in backpressure, so nothing stays behind;
* **everywhere else (the fallback)**, and on HTTP/2 and HTTP/3 connections (they carry other
  requests' streams, so they are never aborted): the blocked ``send()`` is cancelled and raises
  ``OperationCancelled``, and the server closes the connection when the client reads or leaves.

Under trio the timer runs and the token fires, but a ``send()`` blocked on the client is left to
the server (there is no asyncio task to cancel, nor uvicorn transport to abort).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ._exceptions import ClientTooSlow, OperationCancelled
from ._loop import Handle, Loop, running_loop
from ._servers import connection_transport, request_task

if TYPE_CHECKING:
    from starlette.types import Message, Scope, Send

__all__ = ["MinDataRate", "RateWatch", "Transfer"]

_HTTP1 = ("1.0", "1.1")


@dataclass(frozen=True, slots=True)
class MinDataRate:
    """At least ``bytes_per_second`` once ``grace`` seconds have passed (Kestrel's defaults are
    240 bytes/s and 5 s)."""

    bytes_per_second: float
    grace: float = 5.0

    def __post_init__(self) -> None:
        if not self.bytes_per_second > 0:
            raise ValueError(f"bytes_per_second must be positive, not {self.bytes_per_second!r}")
        if not self.grace >= 0:
            raise ValueError(f"grace must be zero or more seconds, not {self.grace!r}")


class Transfer(Protocol):
    """What a rate watch needs of the request: its receive/send, and a way to fire its token."""

    async def receive(self) -> Message: ...

    async def send(self, message: Message) -> None: ...

    @property
    def started(self) -> bool: ...

    def fire(self, reason: BaseException) -> None: ...

    def make_interruptible(self) -> None: ...


class RateWatch:
    """One request's rate checks: its ``receive`` and ``send`` wrap the request's own."""

    __slots__ = (
        "_blocked",
        "_body_bytes",
        "_body_done",
        "_deadline",
        "_last_size",
        "_loop",
        "_reason",
        "_receive_rate",
        "_send_rate",
        "_sender",
        "_server_send",
        "_task",
        "_timer",
        "_timer_at",
        "_transfer",
        "_wait_started",
        "_waited",
    )

    def __init__(
        self,
        transfer: Transfer,
        server_send: Send,
        send_rate: MinDataRate | None,
        receive_rate: MinDataRate | None,
        scope: Scope,
    ) -> None:
        self._transfer = transfer
        # HTTP/1 only: an HTTP/2 or HTTP/3 connection carries other requests' streams too.
        self._server_send = server_send if scope.get("http_version", "1.1") in _HTTP1 else None
        self._send_rate = send_rate
        self._receive_rate = receive_rate
        self._loop: Loop | None = None
        self._task = request_task()
        self._timer: Handle | None = None
        self._timer_at = 0.0
        self._reason: ClientTooSlow | None = None
        # send: how many sends are under way, the deadline of the last one, the task sending,
        # and the size of the last chunk sent (still being flushed, maybe).
        self._blocked = 0
        self._deadline = 0.0
        self._last_size = 0
        self._sender: asyncio.Task[object] | None = None
        # receive: seconds spent waiting for body bytes, bytes received, when the wait began.
        self._waited = 0.0
        self._body_bytes = 0
        self._body_done = receive_rate is None
        self._wait_started: float | None = None
        if receive_rate is not None:
            # A fired token must answer a handler parked in receive(): reads go through the pump.
            transfer.make_interruptible()

    @property
    def reason(self) -> ClientTooSlow | None:
        """Why the watch fired the token, if it did."""
        return self._reason

    # -- send ------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        rate = self._send_rate
        if rate is None or message["type"] != "http.response.body":
            await self._transfer.send(message)
            return
        if self._reason is not None:
            raise OperationCancelled(self._reason)
        size = len(message.get("body", b""))
        flushing = size + self._last_size
        self._last_size = size
        self._deadline = time.monotonic() + max(rate.grace, flushing / rate.bytes_per_second)
        self._blocked += 1
        self._sender = request_task()
        self._arm(self._deadline)
        try:
            await self._transfer.send(message)
        except asyncio.CancelledError:
            task = self._sender
            if self._reason is not None and task is not None and task.cancelling():
                task.uncancel()  # our own cancel: say why instead
                raise OperationCancelled(self._reason) from None
            raise
        finally:
            self._blocked -= 1
        if self._reason is not None:
            # The transport was aborted under a blocked send, which then returned quietly.
            raise OperationCancelled(self._reason)

    # -- receive ---------------------------------------------------------------------------

    async def receive(self) -> Message:
        if self._body_done:
            return await self._transfer.receive()
        rate = self._receive_rate
        assert rate is not None
        started = self._wait_started = time.monotonic()
        # With no more bytes, the average falls below the rate when the time waited reaches
        # max(grace, bytes / rate): fire then, unless the wait ends first.
        self._arm(
            started + max(rate.grace, self._body_bytes / rate.bytes_per_second) - self._waited
        )
        try:
            message = await self._transfer.receive()
        finally:
            self._wait_started = None
            self._waited += time.monotonic() - started
        if message["type"] == "http.request":
            self._body_bytes += len(message.get("body", b""))
            if not message.get("more_body", False):
                self._body_done = True
        else:
            self._body_done = True
        return message

    # -- the one timer -----------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        """Make sure the timer fires no later than ``when`` (monotonic seconds).

        One timer serves both directions: it is re-armed from its callback while a deadline lies
        ahead, and never cancelled on the fast path (a send that returns at once leaves it be).
        """
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        loop = self._loop
        if loop is None:
            loop = self._loop = running_loop()
        self._timer_at = when
        self._timer = loop.call_at(loop.time() + (when - time.monotonic()), self._check)

    def _check(self) -> None:
        self._timer = None
        if self._reason is not None:
            return
        now = time.monotonic()
        due = None
        if self._blocked:
            if now >= self._deadline:
                rate = self._send_rate
                assert rate is not None
                self._fire(ClientTooSlow("send", rate.bytes_per_second))
                return
            due = self._deadline
        started = self._wait_started
        rate = self._receive_rate
        if started is not None and rate is not None:
            waited = self._waited + now - started
            limit = max(rate.grace, self._body_bytes / rate.bytes_per_second)
            if waited >= limit:
                self._fire(
                    ClientTooSlow("receive", rate.bytes_per_second, self._body_bytes, waited)
                )
                return
            until = now + limit - waited
            due = until if due is None else min(due, until)
        if due is not None:
            self._arm(due)

    def _fire(self, reason: ClientTooSlow) -> None:
        self._reason = reason
        self._transfer.fire(reason)
        if reason.direction == "receive" and not self._transfer.started:
            return  # the edge answers 408 with Connection: close, and the server closes
        aborted = self._server_send is not None and abort_transport(self._server_send, self._task)
        if not aborted and self._blocked:
            sender = self._sender
            if sender is not None and not sender.done():
                sender.cancel()

    def close(self) -> None:
        """The request is over: no timer may outlive it."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()


def abort_transport(server_send: Send, task: asyncio.Task[object] | None) -> bool:
    """Drop the connection under the request at once, if the server lets us find it.

    ``abort()``, not ``close()``: ``close()`` waits for buffered data to be flushed, which a
    client that stopped reading never lets happen; ``abort()`` drops it and the server hears of a
    lost connection (uvicorn then ends the blocked ``send()`` quietly). ``False``: not found, the
    caller takes the fallback (see the module docstring).
    """
    transport = connection_transport(server_send, task)
    if transport is None:
        return False
    transport.abort()  # also when closing: a close waiting for a flush that will never come
    return True
