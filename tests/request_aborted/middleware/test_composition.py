"""Next to Starlette's middleware, in routers, mounts and sync endpoints; websockets, lifespan."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from typing import ClassVar

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from request_aborted import (
    CancellationToken,
    ClientDisconnected,
    OperationCancelled,
    RequestAbortedMiddleware,
    current_token,
    request_aborted,
)
from request_aborted.testing import Exchange, Vanish


async def wait_for_abort(request: Request) -> Response:
    await request_aborted(request).wait()
    return PlainTextResponse("too late")


async def echo(request: Request) -> Response:
    assert not request_aborted(request).is_cancellation_requested
    return Response(await request.body())


def test_composition_gzip_inside_streams_and_token_fires_on_disconnect() -> None:
    async def stream(request: Request) -> Response:
        token = request_aborted(request)

        async def chunks() -> object:
            while True:
                token.raise_if_cancellation_requested()
                yield b"x" * 1000
                await asyncio.sleep(0.001)

        return StreamingResponse(chunks(), media_type="text/plain")  # type: ignore[arg-type]

    app = Starlette(
        routes=[Route("/", stream)],
        middleware=[
            Middleware(RequestAbortedMiddleware),
            Middleware(GZipMiddleware, minimum_size=10),
        ],
    )
    exchange = Exchange(
        app, headers=[("accept-encoding", "gzip")], vanish=Vanish.during_response(3)
    )
    asyncio.run(exchange.run())
    assert exchange.headers["content-encoding"] == "gzip"
    assert isinstance(exchange.reason, ClientDisconnected)


def test_composition_gzip_inside_complete_response_is_untouched() -> None:
    async def big(request: Request) -> Response:
        assert not request_aborted(request).is_cancellation_requested
        return PlainTextResponse("y" * 5000)

    app = RequestAbortedMiddleware(
        GZipMiddleware(Starlette(routes=[Route("/", big)]), minimum_size=10)
    )
    exchange = asyncio.run(Exchange(app, headers=[("accept-encoding", "gzip")]).run())
    assert gzip.decompress(exchange.body) == b"y" * 5000
    assert exchange.reason is None


def test_composition_cors_preflight_and_simple_request() -> None:
    app = Starlette(
        routes=[Route("/", wait_for_abort, methods=["GET", "PUT"])],
        middleware=[
            Middleware(RequestAbortedMiddleware),
            Middleware(CORSMiddleware, allow_origins=["https://a.example"], allow_methods=["*"]),
        ],
    )
    origin = ("origin", "https://a.example")
    preflight = Exchange(
        app, method="OPTIONS", headers=[origin, ("access-control-request-method", "PUT")]
    )
    asyncio.run(preflight.run())
    assert preflight.status == 200
    assert preflight.headers["access-control-allow-origin"] == "https://a.example"
    simple = Exchange(app, headers=[origin], vanish=Vanish.in_handler(0.01))
    asyncio.run(simple.run())
    assert isinstance(simple.reason, ClientDisconnected)


def test_composition_trusted_host_rejects_before_the_handler() -> None:
    app = Starlette(
        routes=[Route("/", echo, methods=["POST"])],
        middleware=[
            Middleware(RequestAbortedMiddleware),
            Middleware(TrustedHostMiddleware, allowed_hosts=["good.example"]),
        ],
    )
    bad = asyncio.run(Exchange(app, method="POST", body=b"hi").run())
    assert bad.status == 400
    good = Exchange(app, method="POST", body=[b"h", b"", b"i"], headers=[("host", "good.example")])
    asyncio.run(good.run())
    assert good.body == b"hi"


class Recorder(BaseHTTPMiddleware):
    """A user's BaseHTTPMiddleware: it runs the app in a child task with its own receive."""

    seen: ClassVar[list[CancellationToken]] = []

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        self.seen.append(current_token())
        response = await call_next(request)
        response.headers["x-recorded"] = "yes"
        return response


def test_composition_base_http_middleware_below_ours_sees_token_and_body_intact() -> None:
    Recorder.seen = []
    app = RequestAbortedMiddleware(Recorder(Starlette(routes=[Route("/", echo, methods=["POST"])])))
    body = [b"part-%d;" % i for i in range(20)]
    body.insert(5, b"")
    exchange = asyncio.run(Exchange(app, method="POST", body=body).run())
    assert Recorder.seen == [exchange.token]
    assert exchange.body == b"".join(body)
    assert exchange.headers["x-recorded"] == "yes"


def test_composition_middleware_above_ours_cannot_reach_the_token() -> None:
    app = Recorder(RequestAbortedMiddleware(Starlette(routes=[Route("/", echo)])))
    with pytest.raises(RuntimeError, match=r"add_middleware\(RequestAbortedMiddleware\)"):
        asyncio.run(Exchange(app).run())


def test_composition_mounted_sub_app_and_router_see_the_same_token() -> None:
    tokens: list[CancellationToken] = []

    async def leaf(request: Request) -> Response:
        tokens.append(request_aborted(request))
        tokens.append(current_token())
        async with current_token().scope():
            await asyncio.sleep(10)
        return PlainTextResponse("never")

    sub = Starlette(routes=[Mount("/deeper", routes=[Route("/leaf", leaf)])])
    app = RequestAbortedMiddleware(Starlette(routes=[Mount("/sub", app=sub)]))
    exchange = Exchange(app, path="/sub/deeper/leaf", vanish=Vanish.in_handler(0.01))
    asyncio.run(exchange.run())
    assert tokens == [exchange.token, exchange.token]
    assert isinstance(exchange.reason, ClientDisconnected)


def test_composition_fastapi_router_and_mounted_fastapi_app() -> None:
    router = APIRouter(prefix="/items")

    @router.get("/{item}")
    async def item(item: int) -> dict[str, object]:
        return {"item": item, "fired": current_token().is_cancellation_requested}

    child = FastAPI()
    child.include_router(router)
    api = FastAPI()
    api.mount("/v1", child)
    exchange = asyncio.run(Exchange(RequestAbortedMiddleware(api), path="/v1/items/7").run())
    assert exchange.body == b'{"item":7,"fired":false}'


def test_composition_sync_endpoint_checks_and_registers_from_worker_thread() -> None:
    seen: dict[str, object] = {}

    def blocking(request: Request) -> Response:
        token = current_token()
        assert token is request_aborted(request)
        fired = threading.Event()
        seen["worker"] = threading.get_ident()
        with token.register(lambda reason: fired.set()):  # also starts watching
            assert fired.wait(5)
        seen["callback_fired"] = True
        try:
            token.raise_if_cancellation_requested()
        except OperationCancelled as exc:
            seen["reason"] = exc.reason
            raise
        return PlainTextResponse("never")

    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", blocking)]))
    exchange = Exchange(app, vanish=Vanish.in_handler(0.02))
    asyncio.run(exchange.run())
    assert seen["worker"] != threading.get_ident()
    assert seen["callback_fired"] is True
    assert isinstance(seen["reason"], ClientDisconnected)
    assert exchange.messages == []


def test_composition_sync_endpoint_polling_in_thread_sees_disconnect() -> None:
    def polling(request: Request) -> Response:
        token = request_aborted(request)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not token.is_cancellation_requested:
            time.sleep(0.002)
        return JSONResponse({"fired": token.is_cancellation_requested})

    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", polling)]))
    exchange = asyncio.run(Exchange(app, vanish=Vanish.in_handler(0.02)).run())
    assert isinstance(exchange.reason, ClientDisconnected)


class WebSocketServer:
    """A hand-made websocket server: connect, then the client's messages, then its disconnect."""

    def __init__(self, incoming: list[Message], *, close_after: float = 0.0) -> None:
        self.incoming = [{"type": "websocket.connect"}, *incoming]
        self.close_after = close_after
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.incoming:
            return self.incoming.pop(0)
        await asyncio.sleep(self.close_after)
        return {"type": "websocket.disconnect", "code": 1001}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def run(self, app: RequestAbortedMiddleware) -> Scope:
        scope: Scope = {"type": "websocket", "path": "/ws", "headers": [], "query_string": b""}
        await app(scope, self.receive, self.send)
        return scope


def test_websocket_token_fires_on_websocket_disconnect() -> None:
    seen: dict[str, object] = {}

    async def chat(websocket: WebSocket) -> None:
        token = request_aborted(websocket)
        seen["current"] = current_token() is token
        await websocket.accept()
        waiter = asyncio.create_task(token.wait())
        async for text in websocket.iter_text():
            await websocket.send_text(text.upper())
        seen["reason"] = await waiter

    app = RequestAbortedMiddleware(Starlette(routes=[WebSocketRoute("/ws", chat)]))
    server = WebSocketServer([{"type": "websocket.receive", "text": "hi"}], close_after=0.01)
    asyncio.run(server.run(app))
    assert seen["current"] is True
    assert isinstance(seen["reason"], ClientDisconnected)
    assert server.sent[1] == {"type": "websocket.send", "text": "HI"}


def test_websocket_disconnect_exception_propagates_once_token_fired() -> None:
    """Issue 14: a client closing is a WebSocket's normal end; the app's WebSocketDisconnect
    reaches the server as it would without the middleware (test_websockets.py has the rest)."""
    seen: list[BaseException | None] = []

    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.receive_text()  # raises WebSocketDisconnect at the end
        finally:
            seen.append(request_aborted(websocket).reason)

    app = RequestAbortedMiddleware(Starlette(routes=[WebSocketRoute("/ws", chat)]))
    with pytest.raises(WebSocketDisconnect):
        asyncio.run(WebSocketServer([]).run(app))
    assert [type(reason) for reason in seen] == [ClientDisconnected]


def test_websocket_closed_by_the_app_is_not_an_abort() -> None:
    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()
        assert (await websocket.receive())["type"] == "websocket.disconnect"

    app = RequestAbortedMiddleware(Starlette(routes=[WebSocketRoute("/ws", chat)]))
    scope = asyncio.run(WebSocketServer([]).run(app))
    assert scope["request_aborted.token"].reason is None


def test_lifespan_passes_through_untouched() -> None:
    calls: list[tuple[Scope, Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append((scope, receive, send))

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    asyncio.run(RequestAbortedMiddleware(app)(scope, receive, send))
    assert calls == [({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)]
