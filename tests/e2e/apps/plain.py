"""A user's app as the README shows it, served by a plain ``uvicorn`` with no logging set up.

No ``basicConfig``, no handlers: what the abort line looks like then is what
``tests/e2e/test_log_visibility.py`` specifies.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from request_aborted import CancellationToken, RequestAbortedMiddleware, inject, request_timeout


@inject
async def slow(request: Request, token: CancellationToken) -> PlainTextResponse:
    async with token.scope():  # interrupted when the client leaves
        await asyncio.sleep(30)
    return PlainTextResponse("done")


@request_timeout(0.3)
@inject
async def overrun(request: Request, token: CancellationToken) -> PlainTextResponse:
    async with token.scope():  # interrupted when the timeout fires
        await asyncio.sleep(30)
    return PlainTextResponse("done")


app = Starlette(
    routes=[Route("/slow", slow), Route("/overrun", overrun)],
    middleware=[Middleware(RequestAbortedMiddleware)],
)
