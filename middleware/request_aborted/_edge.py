"""The edge: what a request whose token fired ends as, on the wire and in the logs.

A client that left is normal traffic, not an error: one INFO line with the nginx status 499 and
nothing sent. A timeout is the server's failure to answer in time: 504 (or the policy's status) with
a problem document if nothing was sent yet. Shutdown gets 503 with ``Connection: close``, and so
does any answer the edge writes for a request whose body was not read to the end (the server would
otherwise keep reading it). A response already started when either happens is cut (``_cut``): it
never gets its final body message and its connection is closed, so the client sees a truncated
response (no terminating chunk, a short ``Content-Length``), never one that looks complete.
Exceptions that are not the fallout of the cancellation, or that arrive while the token has not
fired, are none of the edge's business and propagate untouched.

What counts as fallout, once the token fired (``is_fallout``; docs/hazards.md rows 22-29):

* our own ``OperationCancelled``, a ``CancelledError`` nobody else asked for, and the exceptions
  frameworks raise for a disconnect they read from our ``receive`` (``ClientDisconnect``,
  ``WebSocketDisconnect``, anyio's closed/broken/end-of-stream);
* an ``OSError`` only when it came out of *this request's* connection, that is through the
  channel's ``send``/``receive``: a handler's own ``OSError`` (a full disk, a refused socket) is
  a bug and stays a 500 whether or not the client left;
* a ``RuntimeError`` from the server's ``send`` that says the transport is closed (uvloop's way of
  saying what ASGI 2.4 says with ``OSError``), again only through this request's channel;
* ``BaseHTTPMiddleware``'s ``RuntimeError("No response returned.")`` when the response was never
  started: a ``BaseHTTPMiddleware`` below us reports the app it runs ending without a response
  that way, and after our token fired that ending is the cancellation we caused (the app raised
  ``OperationCancelled``, or returned quietly because its client left). Before the token fired the
  same error is a bug and propagates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import TYPE_CHECKING, Final, Protocol

import anyio
from starlette.requests import ClientDisconnect
from starlette.websockets import WebSocketDisconnect

from ._cut import cut_connection
from ._exceptions import (
    ClientDisconnected,
    ClientTooSlow,
    DeadlineExceeded,
    OperationCancelled,
    ServerShuttingDown,
    describe,
)

if TYPE_CHECKING:
    from starlette.types import Scope, Send

    from ._log import AbortLog

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "Connection",
    "end_response",
    "escape",
    "is_closed_transport",
    "is_fallout",
    "log_abort",
    "status_for",
]

logger = logging.getLogger("request_aborted")

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first"
REQUEST_TIMEOUT = 408  # a client below its minimum data rate (``_rates``)
_TITLES: Final = {REQUEST_TIMEOUT: "Request Timeout", 503: "Service Unavailable"}

# Raised by frameworks after they read a disconnect from our receive(), so ours by construction.
_FALLOUT = (
    OperationCancelled,
    ClientDisconnect,
    WebSocketDisconnect,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
)
# uvloop's RuntimeError for a write on a closed transport ("... the handler is closed"); the
# servers' own RuntimeErrors for protocol misuse ("Expected ASGI message...", "Response content
# longer than Content-Length") never say "closed", and those are bugs.
_CLOSED_TRANSPORT: Final = re.compile(r"\bclos(?:ed|ing)\b")
_NO_RESPONSE: Final = ("No response returned.",)  # starlette.middleware.base, call_next


class Connection(Protocol):
    """What the edge asks of a request's channel to tell fallout from bugs."""

    @property
    def started(self) -> bool: ...

    def raised_here(self, exc: BaseException) -> bool: ...


def is_fallout(exc: BaseException, connection: Connection) -> bool:
    """Whether ``exc`` is what a fired token leaves behind, including task groups' wrappings.

    See the module docstring for the rule; ``connection`` is the request's channel.
    """
    if isinstance(exc, BaseExceptionGroup):
        return all(is_fallout(inner, connection) for inner in exc.exceptions)
    if isinstance(exc, asyncio.CancelledError):
        # A cancellation somebody requested of this very task is theirs to finish, not ours.
        task = asyncio.current_task()
        return task is None or task.cancelling() == 0
    if isinstance(exc, OSError):
        return connection.raised_here(exc)
    if type(exc) is RuntimeError:
        if exc.args == _NO_RESPONSE and not connection.started:
            return _from_base_http_middleware(exc)
        return is_closed_transport(exc) and connection.raised_here(exc)
    return isinstance(exc, _FALLOUT)


def is_closed_transport(exc: BaseException) -> bool:
    """Whether a server's ``send`` raised ``exc`` because the connection is gone."""
    if isinstance(exc, OSError):
        return True
    return type(exc) is RuntimeError and _CLOSED_TRANSPORT.search(str(exc)) is not None


def _from_base_http_middleware(exc: RuntimeError) -> bool:
    # call_next raises it while handling the memory stream's EndOfStream; Starlette's collapsing
    # task group moves that into __cause__ when it re-raises a lone exception.
    return isinstance(exc.__context__, anyio.EndOfStream) or isinstance(
        exc.__cause__, anyio.EndOfStream
    )


def status_for(reason: BaseException, timeout_status: int) -> int:
    if isinstance(reason, ClientDisconnected):
        return CLIENT_CLOSED_REQUEST
    if isinstance(reason, ClientTooSlow):
        return REQUEST_TIMEOUT
    if isinstance(reason, DeadlineExceeded):
        return timeout_status
    return 503


async def end_response(
    send: Send,
    reason: BaseException,
    status: int,
    *,
    started: bool,
    completed: bool,
    body_unread: bool = False,
    server_send: Send | None = None,
    http_version: str = "1.1",
) -> None:
    """Finish the response the app left unfinished; a client already gone is no error.

    A started response is cut, not finished: see ``_cut``. ``server_send`` is the server's own
    ``send`` (the connection is found through it); without it the response is only left
    unfinished, which most servers take as the cut on their own.

    ``body_unread``: the request's body was not read to the end. The answer then closes the
    connection: keeping it open means the server goes on reading (and discarding) whatever body
    the client still sends before the next request can start, so a client trickling its body
    holds the socket long after its answer (HTTP/1.1 only; HTTP/2 ends the stream instead).
    """
    if completed or isinstance(reason, ClientDisconnected):
        return
    if started and isinstance(reason, ClientTooSlow):
        return  # the connection was aborted under the response (``_rates``): nothing to finish
    try:
        if started:
            # Headers are out: a final (empty) body message would make the response look whole.
            if server_send is not None:
                await cut_connection(server_send, http_version)
            return
        body = json.dumps(
            {
                "type": "about:blank",
                "title": _TITLES.get(status, "Gateway Timeout"),
                "status": status,
                "detail": str(reason),
            }
        ).encode()
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if isinstance(reason, (ServerShuttingDown, ClientTooSlow)) or body_unread:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
    except Exception as exc:  # the connection is going away; the log line below says enough
        logger.debug("could not finish the response of an aborted request: %r", exc)


def log_abort(
    scope: Scope, reason: BaseException, status: int, elapsed: float, log: AbortLog
) -> None:
    """The one line per aborted request, through ``log`` (visible by default: see ``_log``)."""
    # The path is the client's, percent-decoded by the server: "%0a" arrives as a newline and
    # would let any client forge whole lines in the server log. Method too (h11 and httptools
    # validate it, an ASGI scope need not). Escaped in the structured fields as well, since a
    # formatter may print those.
    method = escape(str(scope.get("method", "WEBSOCKET")))
    path = escape(str(scope.get("path", "")))
    level = logging.INFO
    if isinstance(reason, DeadlineExceeded):
        level = logging.WARNING
    log.log(
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
