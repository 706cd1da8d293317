"""A Starlette app written against anyio, for ``hypercorn -k trio``: README's setup, under trio.

It records when each request's token fired and why (``GET /events``, on ``time.monotonic()``,
which is system-wide on Linux), times out ``/timeout`` with ``@request_timeout``, and runs an
``ApplicationLifetime`` with a background service, so the tests can read from the server's own
output that the abort line, the 504 and the lifetime's phases happen under trio as under asyncio.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import sniffio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from request_aborted import (
    ApplicationLifetime,
    CancellationToken,
    RequestAbortedMiddleware,
    inject,
    request_timeout,
)

from ._ticker import Ticker

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("trio-app")


def record(request: Request, token: CancellationToken) -> None:
    events: list[dict[str, Any]] = request.app.state.events
    path = request.url.path
    events.append({"path": path, "event": "started", "at": time.monotonic()})

    def fired(reason: BaseException) -> None:
        event = {"path": path, "event": "fired", "reason": type(reason).__name__}
        events.append({**event, "at": time.monotonic()})

    token.register(fired)


@inject
async def slow(request: Request, token: CancellationToken) -> PlainTextResponse:
    record(request, token)
    try:
        async with token.scope():
            await anyio.sleep(30)
    finally:
        log.info("slow cleanup finished")
    return PlainTextResponse("finished")


@request_timeout(0.3)
@inject
async def timeout(request: Request, token: CancellationToken) -> PlainTextResponse:
    record(request, token)
    async with token.scope():
        await anyio.sleep(30)
    return PlainTextResponse("finished")


@inject
async def upload(request: Request, token: CancellationToken) -> PlainTextResponse:
    record(request, token)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return PlainTextResponse(str(size))


@inject
async def stream(request: Request, token: CancellationToken) -> StreamingResponse:
    record(request, token)

    async def rows() -> AsyncIterator[str]:
        for number in range(10_000):
            yield f"row {number}\n" * 100
            await anyio.sleep(0.02)

    return StreamingResponse(rows(), media_type="text/plain")


async def backend(request: Request) -> PlainTextResponse:
    return PlainTextResponse(sniffio.current_async_library())


async def events(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.events)


lifetime = ApplicationLifetime(grace=float(os.environ.get("SHUTDOWN_GRACE", "1")), stop_timeout=2)
lifetime.add_service(Ticker())

routes = [Route("/slow", slow), Route("/timeout", timeout), Route("/backend", backend),
          Route("/upload", upload, methods=["POST"]), Route("/stream", stream),
          Route("/events", events)]  # fmt: skip
app = Starlette(
    routes=routes,
    middleware=[Middleware(RequestAbortedMiddleware)],
    lifespan=lifetime.lifespan(),
)
app.state.events = []
