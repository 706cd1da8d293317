"""A server, or a wrapper outside us, that keeps answering ``receive()`` with body."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message

from request_aborted import RequestAbortedMiddleware, request_aborted


def test_body_replayed_forever_does_not_freeze_the_loop() -> None:
    async def handler(request: Request) -> Response:
        async with request_aborted(request).scope():  # starts watching the connection
            await asyncio.sleep(0.05)
        return PlainTextResponse(str(len(await request.body())))

    app = Starlette(routes=[Route("/", handler)], middleware=[Middleware(RequestAbortedMiddleware)])
    sent: list[Message] = []
    calls = 0

    async def receive() -> Message:  # returns at once, every time, without suspending
        nonlocal calls
        calls += 1
        return {"type": "http.request", "body": b"replayed", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 5))

    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"8"
    assert calls < 10
