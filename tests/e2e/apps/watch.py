"""A plain Starlette app, set up the way README.md tells users to, that reports what it observed.

Every handler records when its token fired and why; ``GET /events`` hands the record to the test,
which compares the firing time with the moment its client really closed the socket (both on
``time.monotonic()``, which is system-wide on Linux).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from request_aborted import CancellationToken, RequestAbortedMiddleware, inject

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def record(request: Request, token: CancellationToken, what: str) -> None:
    events: list[dict[str, Any]] = request.app.state.events
    events.append({"path": request.url.path, "event": what, "at": time.monotonic()})

    def fired(reason: BaseException) -> None:
        events.append(
            {"path": request.url.path, "event": "fired", "reason": type(reason).__name__,
             "at": time.monotonic()}
        )  # fmt: skip

    token.register(fired)


@inject
async def slow(request: Request, token: CancellationToken) -> PlainTextResponse:
    record(request, token, "started")
    async with token.scope():
        await asyncio.sleep(30)
    return PlainTextResponse("finished")


@inject
async def upload(request: Request, token: CancellationToken) -> PlainTextResponse:
    record(request, token, "started")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return PlainTextResponse(str(size))


@inject
async def stream(request: Request, token: CancellationToken) -> StreamingResponse:
    record(request, token, "started")

    async def rows() -> Any:
        for number in range(10_000):
            yield f"row {number}\n" * 100
            await asyncio.sleep(0.02)

    return StreamingResponse(rows(), media_type="text/plain")


async def events(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.events)


async def plain(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(
    routes=[
        Route("/slow", slow),
        Route("/upload", upload, methods=["POST"]),
        Route("/stream", stream),
        Route("/events", events),
        Route("/plain", plain),
    ],
    middleware=[Middleware(RequestAbortedMiddleware)],
)
app.state.events = []
