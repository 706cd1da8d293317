# uvicorn --app-dir docs/examples lifetime:app
import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from request_aborted import (
    ApplicationLifetime,
    BackgroundService,
    CancellationToken,
    RequestAbortedMiddleware,
)

summaries: dict[str, int] = {"refreshes": 0}


async def refresh_summaries(token: CancellationToken) -> None:
    async with token.scope():
        await asyncio.sleep(0.01)  # stands in for the queries that rebuild the summaries
    summaries["refreshes"] += 1


class DataSync(BackgroundService):
    async def execute(self, stopping_token: CancellationToken) -> None:
        while not stopping_token.is_cancellation_requested:
            async with stopping_token.scope():
                await refresh_summaries(stopping_token)
                await asyncio.sleep(60)


@asynccontextmanager
async def your_own_lifespan(app: Starlette) -> AsyncIterator[None]:
    yield  # open and close your engines and clients here


async def status(request: Request) -> JSONResponse:
    return JSONResponse(summaries)


lifetime = ApplicationLifetime(grace=float(os.environ.get("SHUTDOWN_GRACE", 30)))
lifetime.add_service(DataSync())
app = Starlette(
    routes=[Route("/status", status)],
    middleware=[Middleware(RequestAbortedMiddleware)],
    lifespan=lifetime.lifespan(your_own_lifespan),
)
