"""The FastAPI twin of ``watch``: the token arrives through the ``RequestAborted`` alias."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import FastAPI

from request_aborted import RequestAbortedMiddleware, request_timeout
from request_aborted.fastapi import RequestAborted

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

app = FastAPI()
app.add_middleware(RequestAbortedMiddleware)
events: list[dict[str, Any]] = []


@app.get("/slow")
async def slow(token: RequestAborted) -> dict[str, str]:
    events.append({"path": "/slow", "event": "started", "at": time.monotonic()})

    def fired(reason: BaseException) -> None:
        event = {"path": "/slow", "event": "fired", "reason": type(reason).__name__}
        events.append({**event, "at": time.monotonic()})

    token.register(fired)
    async with token.scope():
        await asyncio.sleep(30)
    return {"status": "finished"}


@app.get("/budget")
@request_timeout(0.3)
async def budget(token: RequestAborted) -> dict[str, str]:
    async with token.scope():
        await asyncio.sleep(30)
    return {"status": "finished"}


@app.get("/events")
async def get_events() -> list[dict[str, Any]]:
    return events
