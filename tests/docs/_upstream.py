"""A stand-in recommendations service for ``docs/examples/httpx_client.py``'s tests.

``GET /for/{user}`` answers at once with two names and the deadline header it received;
``GET /for/0`` takes ten seconds, long enough for the caller's token to fire first.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def recommendations(request: Request) -> JSONResponse:
    if request.path_params["user"] == 0:
        await asyncio.sleep(10)
    budget = request.headers.get("x-request-timeout-ms", "none")
    return JSONResponse([f"lamp for {request.path_params['user']}", f"budget {budget}"])


app = Starlette(routes=[Route("/for/{user:int}", recommendations)])
