"""WebSockets: the client closing is the normal end; a timeout or shutdown is an abort.

Issue 14, defect 2: the edge used to swallow the endpoint's ``WebSocketDisconnect`` once the token
fired, so FastAPI's documented test pattern (``pytest.raises(WebSocketDisconnect)``), telemetry of
close codes and the server's own logging changed under the middleware. Now every exception the
app raises propagates as it would without the middleware, and a WebSocket ended by a timeout or a
shutdown is closed with 1001 and gets the log line and the ``on_abort`` call HTTP gets.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.types import Message, Scope
from starlette.websockets import WebSocket, WebSocketDisconnect

from request_aborted import (
    CancellationTokenSource,
    ClientDisconnected,
    RequestAbortedMiddleware,
    RequestTimedOut,
    ServerShuttingDown,
    request_aborted,
)


class WebSocketServer:
    """A hand-made server: connect, the client's messages, then (after ``close_after``) the
    client's close with ``code``; ``None`` keeps the client connected and silent for 10 s."""

    def __init__(
        self, incoming: list[Message], *, close_after: float | None = 0.0, code: int = 1000
    ) -> None:
        self.incoming = [{"type": "websocket.connect"}, *incoming]
        self.close_after = close_after
        self.code = code
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.incoming:
            return self.incoming.pop(0)
        await asyncio.sleep(10 if self.close_after is None else self.close_after)
        return {"type": "websocket.disconnect", "code": self.code}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def run(self, app: object) -> Scope:
        scope: Scope = {"type": "websocket", "path": "/ws", "headers": [], "query_string": b"",
                        "asgi": {"version": "3.0", "spec_version": "2.3"}}  # fmt: skip
        await app(scope, self.receive, self.send)  # type: ignore[operator]
        return scope


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "request_aborted"]


async def chat(websocket: WebSocket) -> None:
    """The FastAPI tutorial's endpoint shape: read until the client goes away."""
    await websocket.accept()
    while True:
        text = await websocket.receive_text()
        await websocket.send_text(text.upper())


def starlette_chat(**options: object) -> Starlette:
    app = Starlette(routes=[WebSocketRoute("/ws", chat)])
    app.add_middleware(RequestAbortedMiddleware, **options)  # type: ignore[arg-type]
    return app


@pytest.mark.parametrize("code", [1000, 1001, 1006])
def test_websocket_disconnect_propagates_as_without_the_middleware(
    caplog: pytest.LogCaptureFixture, code: int
) -> None:
    caplog.set_level(logging.DEBUG)
    aborts: list[BaseException] = []
    server = WebSocketServer([{"type": "websocket.receive", "text": "hi"}], code=code)

    with pytest.raises(WebSocketDisconnect) as raised:
        asyncio.run(server.run(starlette_chat(on_abort=lambda s, r, e: aborts.append(r))))

    assert raised.value.code == code  # what close-code telemetry reads
    assert server.sent[1] == {"type": "websocket.send", "text": "HI"}
    assert lines(caplog) == []  # the client closing is the normal end: no abort line
    assert aborts == []


def test_websocket_disconnect_fires_the_token_with_client_disconnected() -> None:
    seen: list[BaseException | None] = []

    async def endpoint(websocket: WebSocket) -> None:
        token = request_aborted(websocket)
        await websocket.accept()
        try:
            await websocket.receive_text()
        finally:
            seen.append(token.reason)

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    app.add_middleware(RequestAbortedMiddleware)
    with pytest.raises(WebSocketDisconnect):
        asyncio.run(WebSocketServer([], code=1001).run(app))
    assert [type(reason) for reason in seen] == [ClientDisconnected]


def test_websocket_disconnect_fastapi_test_client_pattern() -> None:
    """FastAPI's docs test a WebSocket endpoint with ``pytest.raises(WebSocketDisconnect)``."""
    app = FastAPI()
    app.add_api_websocket_route("/ws", chat)
    app.add_middleware(RequestAbortedMiddleware)

    client = TestClient(app)
    with pytest.raises(WebSocketDisconnect) as raised, client.websocket_connect("/ws") as websocket:
        websocket.send_text("hi")
        assert websocket.receive_text() == "HI"
        websocket.close(1001)
    assert raised.value.code == 1001


def test_websocket_closed_by_the_app_is_not_an_abort(caplog: pytest.LogCaptureFixture) -> None:
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close(code=1008)

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    app.add_middleware(RequestAbortedMiddleware)
    server = WebSocketServer([])
    scope = asyncio.run(server.run(app))
    assert scope["request_aborted.token"].reason is None
    assert server.sent[-1]["code"] == 1008
    assert lines(caplog) == []


def test_websocket_timeout_closes_with_1001_logs_and_calls_on_abort(
    caplog: pytest.LogCaptureFixture,
) -> None:
    aborts: list[tuple[str, BaseException]] = []
    server = WebSocketServer([], close_after=None)  # a client that stays, silent

    scope = asyncio.run(
        server.run(
            starlette_chat(timeout=0.05, on_abort=lambda s, r, e: aborts.append((s["path"], r)))
        )
    )

    assert isinstance(scope["request_aborted.token"].reason, RequestTimedOut)
    assert server.sent[0] == {"type": "websocket.accept", "subprotocol": None, "headers": []}
    close = server.sent[-1]
    assert close["type"] == "websocket.close"
    assert close["code"] == 1001
    assert "timed out" in close["reason"]
    assert [(path, type(reason)) for path, reason in aborts] == [("/ws", RequestTimedOut)]
    [record] = lines(caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("WEBSOCKET /ws aborted after ")
    assert record.getMessage().endswith("(1001)")


def test_websocket_shutdown_closes_with_1001_logs_and_calls_on_abort(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    shutdown = CancellationTokenSource()
    aborts: list[BaseException] = []

    async def main() -> Scope:
        asyncio.get_running_loop().call_later(0.05, shutdown.cancel, ServerShuttingDown())
        app = starlette_chat(shutdown=shutdown.token, on_abort=lambda s, r, e: aborts.append(r))
        return await server.run(app)

    server = WebSocketServer([], close_after=None)
    scope = asyncio.run(main())

    assert isinstance(scope["request_aborted.token"].reason, ServerShuttingDown)
    assert server.sent[-1]["type"] == "websocket.close"
    assert server.sent[-1]["code"] == 1001
    assert [type(reason) for reason in aborts] == [ServerShuttingDown]
    [record] = lines(caplog)
    assert "ServerShuttingDown" in record.getMessage()


def test_websocket_timeout_before_accept_refuses_it() -> None:
    async def slow_to_accept(websocket: WebSocket) -> None:
        async with request_aborted(websocket).scope():
            await asyncio.sleep(10)
        await websocket.accept()

    app = Starlette(routes=[WebSocketRoute("/ws", slow_to_accept)])
    app.add_middleware(RequestAbortedMiddleware, timeout=0.05)
    server = WebSocketServer([], close_after=None)
    asyncio.run(server.run(app))
    assert [message["type"] for message in server.sent] == ["websocket.close"]  # a 403 denial
