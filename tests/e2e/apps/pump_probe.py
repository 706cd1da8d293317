"""Reports, from inside a real server, whether a watched request's pump is an asyncio task.

The outer ASGI function asks ``_watcher.hand_drivable`` about the server's own ``receive`` before
the middleware wraps it. ``GET /count`` observes its token, outlives ``watch_delay`` and answers
how many asyncio tasks appeared meanwhile (a task pump is one). ``GET /wait`` waits for its token
and records why it fired; ``GET /events`` hands the record to tests/e2e/test_pump_servers.py.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from request_aborted import RequestAbortedMiddleware, request_aborted
from request_aborted._loop import running_loop
from request_aborted._watcher import hand_drivable

DRIVABLE = "pump_probe.drivable"
EVENTS: list[str] = []


async def count(request: Request) -> JSONResponse:
    before = len(asyncio.all_tasks())
    assert not request_aborted(request).is_cancellation_requested  # observed: watched soon
    await asyncio.sleep(0.05)  # well past watch_delay
    extra = len(asyncio.all_tasks()) - before
    return JSONResponse({"drivable": request.scope[DRIVABLE], "extra_tasks": extra})


async def wait(request: Request) -> JSONResponse:
    token = request_aborted(request)
    reason = await asyncio.wait_for(token.wait(), 10)
    EVENTS.append(type(reason).__name__)
    return JSONResponse({"fired": type(reason).__name__})


async def events(request: Request) -> JSONResponse:
    return JSONResponse(EVENTS)


watched = RequestAbortedMiddleware(
    Starlette(routes=[Route("/count", count), Route("/wait", wait), Route("/events", events)])
)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    scope[DRIVABLE] = hand_drivable(running_loop(), receive)
    await watched(scope, receive, send)
