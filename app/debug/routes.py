"""``/debug/events`` and ``/debug/internals``: ordinary routes, behind a loopback-only gate.

The gate is a plain ASGI wrapper around the mounted routes: a client that is not on the loopback
interface gets the 404 of a route that does not exist, whatever the path or method, before any
route sees the request.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from .events import DebugEvents
from .internals import Internals

__all__ = ["INTERNALS_STATE", "debug_routes"]

INTERNALS_STATE: Final = "debug_internals"
"""The lifespan state key of the ``Internals`` the lifespan builds from its engine and pools."""


def debug_routes(events: DebugEvents) -> list[BaseRoute]:
    """The ``/debug`` mount: the record of ``events``, and the process's internals."""

    async def record(request: Request) -> Response:
        if request.method == "DELETE":
            events.events.clear()  # the counts stay: they are what a soak compares
            return Response(status_code=204)
        return JSONResponse(list(events.events))

    async def internals(request: Request) -> JSONResponse:
        process: Internals = getattr(request.state, INTERNALS_STATE)
        return JSONResponse(
            {"pid": os.getpid(), "requests": events.requests(), **process.snapshot()}
        )

    routes = [
        Route("/events", record, methods=["GET", "DELETE"]),
        Route("/internals", internals, methods=["GET"]),
    ]
    return [Mount("/debug", app=_LoopbackOnly(Router(routes)))]


class _LoopbackOnly:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _is_loopback(scope.get("client")):
            await self.app(scope, receive, send)
        else:
            await _NOT_FOUND(scope, receive, send)


def _is_loopback(client: Any) -> bool:
    if not client:
        return False
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:  # a unix socket's path, or a test client's "testclient"
        return False


_NOT_FOUND: Final = JSONResponse(
    {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no such route"},
    status_code=404,
    media_type="application/problem+json",
)
