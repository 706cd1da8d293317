"""A FastAPI app with a ``@app.middleware("http")`` inside ours, for the edge's end-to-end tests.

The stack is the one README.md recommends: ``RequestAbortedMiddleware`` added last, so it sits
outside the ``BaseHTTPMiddleware`` FastAPI builds for ``@app.middleware("http")``. Every handler
records when its token fired; ``GET /events`` hands the record to the test. ``bare`` is the same
app without our middleware, so a test can compare what the server logs with and without it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response, WebSocket
from starlette.types import Receive, Scope, Send

from request_aborted import CancellationToken, RequestAbortedMiddleware, request_timeout
from request_aborted.fastapi import RequestAborted

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

app = FastAPI()
events: list[dict[str, Any]] = []


def record(path: str, token: CancellationToken) -> None:
    events.append({"path": path, "event": "started", "at": time.monotonic()})

    def fired(reason: BaseException) -> None:
        event = {"path": path, "event": "fired", "reason": type(reason).__name__}
        events.append({**event, "at": time.monotonic()})

    token.register(fired)


@app.middleware("http")
async def stamp(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers["x-stamped"] = "yes"
    return response


@app.get("/slow")
async def slow(token: RequestAborted) -> dict[str, str]:
    record("/slow", token)
    async with token.scope():
        await asyncio.sleep(30)
    return {"status": "finished"}


@app.get("/items/{name}")
async def item(name: str, token: RequestAborted) -> dict[str, str]:
    record("/items", token)
    async with token.scope():
        await asyncio.sleep(30)
    return {"name": name}


@app.get("/budget")
@request_timeout(0.3)
async def budget(token: RequestAborted) -> dict[str, str]:
    async with token.scope():
        await asyncio.sleep(30)
    return {"status": "finished"}


@app.post("/upload-budget")
@request_timeout(0.3)
async def upload_budget(token: RequestAborted) -> dict[str, str]:
    """Times out without reading its body: the answer must close the connection."""
    async with token.scope():
        await asyncio.sleep(30)
    return {"status": "finished"}


@app.get("/pause")
async def pause(token: RequestAborted) -> dict[str, str]:
    """Answers after a pause without watching its token: only the failing send can tell."""
    record("/pause", token)
    await asyncio.sleep(0.5)
    return {"status": "paused"}


@app.get("/own-oserror")
@request_timeout(0.2)
async def own_oserror(token: RequestAborted) -> dict[str, str]:
    """A real bug that happens to raise OSError after the token fired: still a 500."""
    fired = asyncio.Event()
    token.register(lambda reason: fired.set())
    await fired.wait()
    raise OSError(28, "No space left on device")


async def too_long(scope: Scope, receive: Receive, send: Send) -> None:
    """A real bug below the edge: a body longer than its Content-Length (uvicorn raises)."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b"too long"})


app.mount("/too-long", too_long)


@app.websocket("/ws")
async def chat(websocket: WebSocket) -> None:
    """The FastAPI tutorial's endpoint: echo until the client goes away (WebSocketDisconnect)."""
    await websocket.accept()
    while True:
        text = await websocket.receive_text()
        await websocket.send_text(f"echo: {text}")


@app.get("/events")
async def get_events() -> list[dict[str, Any]]:
    return events


bare = FastAPI(routes=list(app.router.routes))  # the same routes, without our middleware
app.add_middleware(RequestAbortedMiddleware)
