"""Why work was cancelled, and the exception that says so.

A token fires with a *reason*: an exception instance that describes the cause, the way Go's
``context.Cause`` does. Code that observes the token raises ``OperationCancelled`` carrying that
reason, so the edge of the application can tell a client that left from a deadline that passed.

Exception hierarchy::

    BaseException
    └── OperationCancelled            raised where cancelled work stops; ``.reason`` says why
    Exception
    └── CancellationReason            why a token fired (never raised by the library itself)
        ├── CancellationRequested     ``cancel()`` was called without a reason
        ├── DeadlineExceeded          the source's own timeout passed
        │   └── RequestTimedOut       the request's time budget ran out
        ├── ClientDisconnected        the client went away before the response completed
        ├── ClientTooSlow             the client read or sent below its minimum data rate
        └── ServerShuttingDown        the host is stopping and the grace period is over

``OperationCancelled`` derives from ``BaseException`` for the same reason ``asyncio.CancelledError``
does: a generic ``except Exception:`` in application code must not swallow a cancellation. It is
deliberately *not* a ``CancelledError`` subclass, because task groups compare cancellations by
identity and would mistake it for their own.

Any exception instance may serve as a reason: ``source.cancel(PaymentDeclined())`` is fine.
"""

from __future__ import annotations

__all__ = [
    "CancellationReason",
    "CancellationRequested",
    "ClientDisconnected",
    "ClientTooSlow",
    "DeadlineExceeded",
    "OperationCancelled",
    "RequestTimedOut",
    "ServerShuttingDown",
]


class OperationCancelled(BaseException):
    """Raised when work stops because its token fired; ``reason`` holds the cause."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"operation cancelled: {describe(self.reason)}"


class CancellationReason(Exception):
    """Base class of the reasons this library fires tokens with."""


class CancellationRequested(CancellationReason):
    """Used when ``cancel()`` is called without a reason."""


class DeadlineExceeded(CancellationReason):
    """Used when a source's own timeout passes."""

    def __init__(self, timeout: float | None = None) -> None:
        super().__init__(timeout)
        self.timeout = timeout

    def __str__(self) -> str:
        if self.timeout is None:
            return "deadline exceeded"
        return f"deadline of {self.timeout:g}s exceeded"


class RequestTimedOut(DeadlineExceeded):
    """Used when a request runs longer than its timeout policy allows."""

    def __init__(self, timeout: float | None = None, policy: str | None = None) -> None:
        super().__init__(timeout)
        self.policy = policy

    def __str__(self) -> str:
        where = f" (policy {self.policy!r})" if self.policy else ""
        after = "" if self.timeout is None else f" after {self.timeout:g}s"
        return f"request timed out{after}{where}"


class ClientDisconnected(CancellationReason):
    """Used when the client closes the connection before the response is complete."""

    def __str__(self) -> str:
        return "client disconnected"


class ClientTooSlow(CancellationReason):
    """Used when the client reads the response, or sends its body, below the minimum data rate.

    ``direction`` is ``"send"`` (the response: the server's sends stayed blocked on a client that
    does not read) or ``"receive"`` (the body: it arrived slower than the rate). Not a
    ``ClientDisconnected``: the client is still there, holding the connection, and is answered
    408 if nothing was sent yet; the connection is closed either way.
    """

    def __init__(
        self,
        direction: str,
        bytes_per_second: float,
        transferred: int | None = None,
        seconds: float | None = None,
    ) -> None:
        super().__init__(direction, bytes_per_second)
        self.direction = direction
        self.bytes_per_second = bytes_per_second
        self.transferred = transferred
        self.seconds = seconds

    def __str__(self) -> str:
        what = "read the response" if self.direction == "send" else "sent its body"
        text = f"client {what} slower than {self.bytes_per_second:g} bytes/s"
        if self.transferred is not None and self.seconds is not None:
            text += f" ({self.transferred} bytes in {self.seconds:.1f}s)"
        return text


class ServerShuttingDown(CancellationReason):
    """Used when the host stops and a request outlives the shutdown grace period."""

    def __str__(self) -> str:
        return "server shutting down"


def describe(reason: BaseException) -> str:
    """Return ``Name: message`` for logs, or just the name when the message would repeat it."""
    name = type(reason).__name__
    text = str(reason)
    return f"{name}: {text}" if text and text != name else name
