"""An app with an ApplicationLifetime, a background service and requests of every length.

Used by the shutdown tests: SIGTERM arrives while a quick request, a long report and a streaming
export are in flight and the background service is mid-iteration.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from request_aborted import (
    ApplicationLifetime,
    BackgroundService,
    CancellationToken,
    RequestAbortedMiddleware,
    inject,
)

from ._ticker import Ticker

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("shutdown-app")


class Stubborn(BackgroundService):
    """Ignores its token: the lifetime must name it and cancel it when its stop time runs out."""

    stop_timeout = 0.5

    async def execute(self, stopping_token: CancellationToken) -> None:
        while True:  # noqa: ASYNC110 - deliberately deaf to its token
            await asyncio.sleep(0.05)


@inject
async def quick(token: CancellationToken) -> PlainTextResponse:
    log.info("started /quick")
    async with token.scope():
        await asyncio.sleep(0.5)
    return PlainTextResponse("quick done")


@inject
async def report(token: CancellationToken) -> PlainTextResponse:
    log.info("started /report")
    try:
        async with token.scope():
            await asyncio.sleep(30)
    finally:
        log.info("report cleanup finished")
    return PlainTextResponse("report done")


@inject
async def export(token: CancellationToken) -> StreamingResponse:
    log.info("started /export")

    async def rows() -> AsyncIterator[str]:
        for number in range(1000):
            token.raise_if_cancellation_requested()
            yield f"row {number}\n"
            await asyncio.sleep(0.05)

    return StreamingResponse(rows(), media_type="text/csv")


lifetime = ApplicationLifetime(grace=float(os.environ.get("SHUTDOWN_GRACE", "1")), stop_timeout=2)
lifetime.add_service(Ticker())
if os.environ.get("STUBBORN") == "1":
    lifetime.add_service(Stubborn())

app = Starlette(
    routes=[Route("/quick", quick), Route("/report", report), Route("/export", export)],
    middleware=[Middleware(RequestAbortedMiddleware)],
    lifespan=lifetime.lifespan(),
)
