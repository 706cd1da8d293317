"""Make a client vanish at a chosen moment, in-process, and see what your handler did about it.

In-process clients (``TestClient``, ``httpx.ASGITransport``) only report ``http.disconnect`` after
the response completed, so they cannot show a client leaving. ``Exchange`` plays the server by hand:
it feeds the request body in pieces, lets the client vanish during the upload, once the handler has
started, or after some response chunks, and records what the client received::

    import asyncio

    from request_aborted import ClientDisconnected
    from request_aborted.testing import Exchange, Phase, Vanish

    from myapp import app  # wrapped in RequestAbortedMiddleware


    def test_report_stops_when_the_client_leaves() -> None:
        exchange = Exchange(app, path="/report", vanish=Vanish.in_handler(delay=0.1))
        asyncio.run(exchange.run())
        assert exchange.disconnected_at is Phase.HANDLER
        assert isinstance(exchange.reason, ClientDisconnected)
        assert exchange.status is None  # nothing was sent to the client that left

``disconnect="repeat"`` (default) answers every ``receive()`` after the client left with
``http.disconnect`` and drops unread body, as uvicorn does; ``"once"`` hands it out a single time,
after the queued body, as hypercorn, daphne and granian do. At ``spec_version="2.4"`` a ``send()``
after the client left raises ``OSError``; ``None`` leaves out ``scope["asgi"]`` (docs/testing.md).
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message

from ._context import SCOPE_KEY
from ._token import CancellationToken

__all__ = ["Exchange", "Phase", "Vanish"]


class Phase(enum.Enum):
    """When the client went away."""

    UPLOAD = "upload"  # before it had sent the whole request body
    HANDLER = "handler"  # after the request, before the response started
    RESPONSE = "response"  # after the response started, before it completed


@dataclass(frozen=True, slots=True)
class Vanish:
    """A moment for the client to go away; build one with the class methods."""

    phase: Phase
    count: int = 0
    delay: float = 0.0

    @classmethod
    def during_upload(cls, after_bytes: int) -> Vanish:
        """Leave once ``after_bytes`` body bytes were received by the app; the rest never comes."""
        return cls(Phase.UPLOAD, count=after_bytes)

    @classmethod
    def in_handler(cls, delay: float = 0.0) -> Vanish:
        """Leave ``delay`` seconds after the app started (at once: at its first ``await``)."""
        return cls(Phase.HANDLER, delay=delay)

    @classmethod
    def during_response(cls, after_chunks: int = 1) -> Vanish:
        """Leave after receiving ``after_chunks`` response body messages (unless it completed)."""
        return cls(Phase.RESPONSE, count=after_chunks)


class Exchange:
    """One request played against an ASGI app, and what the client saw of its response.

    After ``run()``: ``status``, ``headers`` and ``body`` are what reached the
    client before it left; ``messages`` is everything the app sent; ``disconnected_at`` says when
    the client left, ``None`` if it stayed; ``receive_calls`` and ``disconnects_delivered`` count
    the app's ``receive()`` calls and the ``http.disconnect`` answers among them.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        method: str = "GET",
        path: str = "/",
        query_string: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | Iterable[bytes] = b"",
        vanish: Vanish | None = None,
        spec_version: str | None = "2.3",
        disconnect: Literal["repeat", "once"] = "repeat",
        timeout: float | None = 10.0,
    ) -> None:
        self.app = app
        self.vanish_at = vanish
        self.disconnect_mode = disconnect
        self.timeout = timeout
        version = tuple(map(int, (spec_version or "2.0").split(".")))
        self._send_raises = version >= (2, 4)  # ASGI 2.4: send() on a closed connection raises
        pieces = [body] if isinstance(body, bytes) else list(body)
        self._pending: deque[Message] = deque(
            {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
            for i, piece in enumerate(pieces or [b""])
        )
        raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        if all(name != b"host" for name, _ in raw):
            raw.insert(0, (b"host", b"testserver"))
        self.scope: dict[str, Any] = {
            "type": "http",
            "http_version": "1.1",
            "method": method.upper(),
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": query_string,
            "headers": raw,
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "extensions": {"http.response.trailers": {}},
            "state": {},
        }
        if spec_version is not None:
            self.scope["asgi"] = {"version": "3.0", "spec_version": spec_version}
        self.messages: list[Message] = []
        self.status: int | None = None
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.completed = False
        self.disconnected_at: Phase | None = None
        self.received_bytes = 0
        self.receive_calls = 0
        self.disconnects_delivered = 0
        self._trailers = False
        self._chunks_sent = 0
        self._news = asyncio.Event()

    @property
    def headers(self) -> Headers:
        """The response headers the client received (case-insensitive, as Starlette's)."""
        return Headers(raw=self.raw_headers)

    @property
    def token(self) -> CancellationToken | None:
        """The request's token, as the middleware stored it in the scope (``None`` without it)."""
        token: CancellationToken | None = self.scope.get(SCOPE_KEY)
        return token

    @property
    def reason(self) -> BaseException | None:
        """Why the request's token fired, or ``None``."""
        token = self.token
        return None if token is None else token.reason

    def vanish(self, phase: Phase | None = None) -> None:
        """Make the client go away now (from a handler or another task, on the loop's thread)."""
        if self.disconnected_at is not None or self.completed:
            return
        if phase is None:
            phase = Phase.RESPONSE if self.status is not None else Phase.HANDLER
        self.disconnected_at = phase
        if phase is Phase.UPLOAD:
            self._pending.clear()  # the rest of the body was never sent
        self._news.set()

    async def run(self) -> Self:
        """Call the app with this exchange's receive and send; the app's exceptions propagate."""
        loop = asyncio.get_running_loop()
        vanish, handle = self.vanish_at, None
        if vanish is not None and vanish.phase is Phase.HANDLER:
            handle = loop.call_later(vanish.delay, self.vanish, Phase.HANDLER)
        try:
            async with asyncio.timeout(self.timeout):
                await self.app(self.scope, self.receive, self.send)
        finally:
            if handle is not None:
                handle.cancel()
        return self

    async def receive(self) -> Message:
        """The server's ``receive``: body pieces, then ``http.disconnect`` as the mode says."""
        self.receive_calls += 1
        while True:  # like real servers, suspends only when it has nothing to hand out
            over = self.disconnected_at is not None or self.completed
            if over and (self.disconnect_mode == "repeat" or not self._pending):
                return await self._disconnected()  # uvicorn drops unread body; hypercorn queues
            if self._pending:
                vanish = self.vanish_at
                if (
                    vanish is not None
                    and vanish.phase is Phase.UPLOAD
                    and self.received_bytes >= vanish.count
                ):
                    self.vanish(Phase.UPLOAD)
                    continue
                message = self._pending.popleft()
                self.received_bytes += len(message["body"])
                return message
            self._news.clear()
            await self._news.wait()

    async def _disconnected(self) -> Message:
        if self.disconnect_mode == "once" and self.disconnects_delivered:
            await asyncio.get_running_loop().create_future()  # never again, as hypercorn
        self.disconnects_delivered += 1
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        """The server's ``send``: record, deliver unless the client left, then yield."""
        self.messages.append(message)
        if self.disconnected_at is not None:
            if self._send_raises:
                raise OSError("the client disconnected")
            return
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            self.raw_headers = [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers", [])]
            self._trailers = message.get("trailers", False)
        elif kind == "http.response.body":
            self.body += message.get("body", b"")
            self._chunks_sent += 1
            if not message.get("more_body", False) and not self._trailers:
                self._complete()
        elif kind == "http.response.pathsend" or (
            kind == "http.response.trailers" and not message.get("more_trailers", False)
        ):
            self._complete()
        vanish = self.vanish_at
        if (
            vanish is not None
            and vanish.phase is Phase.RESPONSE
            and not self.completed
            and self._chunks_sent >= vanish.count
        ):
            self.vanish(Phase.RESPONSE)
        await asyncio.sleep(0)  # a real transport yields: a woken receive() may run meanwhile

    def _complete(self) -> None:
        # Servers answer receive() with http.disconnect once the response is complete.
        self.completed = True
        self._news.set()
