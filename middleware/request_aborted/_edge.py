"""The edge: what a request whose token fired ends as, on the wire and in the logs.

A client that left is normal traffic, not an error: one INFO line with the nginx status 499 and
nothing sent. A timeout is the server's failure to answer in time: 504 (or the policy's status) with
a problem document if nothing was sent yet, else the response is ended where it stands.
Shutdown gets 503 with ``Connection: close``. Exceptions that are not the fallout of the
cancellation, or that arrive while the token has not fired, are none of the edge's business and
propagate untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

import anyio
from starlette.requests import ClientDisconnect
from starlette.websockets import WebSocketDisconnect

from ._exceptions import (
    ClientDisconnected,
    DeadlineExceeded,
    OperationCancelled,
    ServerShuttingDown,
    describe,
)

if TYPE_CHECKING:
    from starlette.types import Scope, Send

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "end_response",
    "escape",
    "is_fallout",
    "log_abort",
    "status_for",
]

logger = logging.getLogger("request_aborted")

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first"

_FALLOUT = (
    OperationCancelled,
    asyncio.CancelledError,
    OSError,
    ClientDisconnect,
    WebSocketDisconnect,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
)


def is_fallout(exc: BaseException) -> bool:
    """Whether ``exc`` is what a fired token leaves behind, including task groups' wrappings."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_fallout(inner) for inner in exc.exceptions)
    if isinstance(exc, asyncio.CancelledError):
        # A cancellation somebody requested of this very task is theirs to finish, not ours.
        task = asyncio.current_task()
        return task is None or task.cancelling() == 0
    return isinstance(exc, _FALLOUT)


def status_for(reason: BaseException, timeout_status: int) -> int:
    if isinstance(reason, ClientDisconnected):
        return CLIENT_CLOSED_REQUEST
    if isinstance(reason, DeadlineExceeded):
        return timeout_status
    return 503


async def end_response(
    send: Send, reason: BaseException, status: int, *, started: bool, completed: bool
) -> None:
    """Finish the response the app left unfinished; a client already gone is no error."""
    if completed or isinstance(reason, ClientDisconnected):
        return
    try:
        if started:
            # Headers are out: the only clean ending left is the final (empty) body message.
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        body = json.dumps(
            {
                "type": "about:blank",
                "title": "Service Unavailable" if status == 503 else "Gateway Timeout",
                "status": status,
                "detail": str(reason),
            }
        ).encode()
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if isinstance(reason, ServerShuttingDown):
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
    except Exception as exc:  # the connection is going away; the log line below says enough
        logger.debug("could not finish the response of an aborted request: %r", exc)


def log_abort(scope: Scope, reason: BaseException, status: int, elapsed: float) -> None:
    # The path is the client's, percent-decoded by the server: "%0a" arrives as a newline and
    # would let any client forge whole lines in the server log. Method too (h11 and httptools
    # validate it, an ASGI scope need not). Escaped in the structured fields as well, since a
    # formatter may print those.
    method = escape(str(scope.get("method", "WEBSOCKET")))
    path = escape(str(scope.get("path", "")))
    level = logging.INFO
    if isinstance(reason, DeadlineExceeded):
        level = logging.WARNING
    logger.log(
        level,
        "%s %s aborted after %.3fs: %s (%d)",
        method,
        path,
        elapsed,
        describe(reason),
        status,
        extra={
            "method": method,
            "path": path,
            "elapsed": elapsed,
            "reason": type(reason).__name__,
            "status": status,
        },
    )


def escape(text: str) -> str:
    """``text`` with every non-printable character (and the backslash) as a Python escape.

    Printable text, accents and CJK included, stays as it is; control characters, line and
    paragraph separators and other non-printables become ``\\n``, ``\\x1b``, ``\\u2028``. The
    backslash is escaped too, so an escape in the log can only mean one thing.
    """
    if text.isprintable() and "\\" not in text:
        return text  # nearly every path: no copy
    # repr() of one character is its escape in quotes, a backslash doubled.
    return "".join(
        char if char.isprintable() and char != "\\" else repr(char)[1:-1] for char in text
    )
