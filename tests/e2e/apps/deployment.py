"""The app every server in the deployment matrix runs (tests/e2e/test_deployment*.py).

``/slow?seconds=N`` waits under its token (a client that leaves or a shutdown ends it),
``/upload`` counts a streamed body, ``/timeout`` outlives its 0.5 s policy, ``/stream`` sends a
line every 50 ms until its token fires (``/stream-timeout``: after 0.5 s), ``/readyz`` is the
readiness probe. ``SHUTDOWN_GRACE`` and ``DRAIN_DELAY`` configure the lifetime.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from itertools import count

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from request_aborted import (
    AbortHook,
    ApplicationLifetime,
    CancellationToken,
    Readiness,
    RequestAbortedMiddleware,
    inject,
    request_timeout,
)

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("deployment-app")


@inject
async def slow(request: Request, token: CancellationToken) -> PlainTextResponse:
    seconds = float(request.query_params.get("seconds", "30"))
    log.info("started /slow %g pid=%d http/%s", seconds, os.getpid(),
             request.scope.get("http_version"))  # fmt: skip
    try:
        async with token.scope():
            await asyncio.sleep(seconds)
    finally:
        log.info("finished /slow %g", seconds)
    return PlainTextResponse("slow done")


@inject
async def upload(request: Request, token: CancellationToken) -> JSONResponse:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
    return JSONResponse({"bytes": received})


@request_timeout(0.5)
@inject
async def timeout(token: CancellationToken) -> PlainTextResponse:
    async with token.scope():
        await asyncio.sleep(30)
    return PlainTextResponse("never")


async def lines(token: CancellationToken, path: str) -> AsyncIterator[bytes]:
    log.info("started %s", path)
    async with token.scope():  # anyio's sleep: hypercorn -k trio runs this app too
        for number in count():
            yield f"line {number}\n".encode()
            await anyio.sleep(0.05)


@inject
async def stream(request: Request, token: CancellationToken) -> StreamingResponse:
    return StreamingResponse(lines(token, request.url.path), media_type="text/plain")


@request_timeout(0.5)
@inject
async def stream_timeout(request: Request, token: CancellationToken) -> StreamingResponse:
    return StreamingResponse(lines(token, request.url.path), media_type="text/plain")


lifetime = ApplicationLifetime(
    grace=float(os.environ.get("SHUTDOWN_GRACE", "1")),
    drain_delay=float(os.environ.get("DRAIN_DELAY", "0")),
    stop_timeout=2,
)


def build_app(on_abort: AbortHook | None = None) -> Starlette:
    return Starlette(
        routes=[
            Route("/slow", slow),
            Route("/upload", upload, methods=["POST"]),
            Route("/timeout", timeout),
            Route("/stream", stream),
            Route("/stream-timeout", stream_timeout),
            Route("/readyz", Readiness()),
        ],
        middleware=[Middleware(RequestAbortedMiddleware, on_abort=on_abort)],
        lifespan=lifetime.lifespan(),
    )


app = build_app()
