"""The ASGI apps the server benchmarks run, one factory per variant.

Servers load them as factories (``uvicorn --factory apps:bare``, ``hypercorn 'apps:latency()'``,
with ``bench/`` on the path). Only starlette is imported at module level: the middlewares are
imported inside their factories, so the same file also serves an interpreter that has
fastapi-disconnect but not this package installed.

Every app answers the same two TechEmpower-style endpoints, ``/plaintext`` and ``/json``, and the
same two with one ``await asyncio.sleep(0)`` in the handler (``/plaintext-sleep``, ``/json-sleep``),
and with that await inside ``asyncio.timeout(30)`` (``/plaintext-timeout``, ``/json-timeout``, the
standard library's nearest equivalent of a token scope), inside an ``async with`` that does
nothing (``/plaintext-nothing``, ``/json-nothing``) or inside a plain ``with`` that does nothing
(``/plaintext-with``, ``/json-with``): reference points.
The middleware apps add ``/plaintext-token`` and ``/json-token``: the same handler body, but awaited
inside ``async with request_aborted(request).scope():``, so comparing them with the ``-sleep``
endpoints of the bare app measures what taking the token costs and nothing else.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from request_aborted import CancellationToken, Registration

TEXT = "Hello, World!"
WATCH_DELAY = 0.0  # seconds, for middleware_eager(): a watcher from the first look
MESSAGE = {"message": TEXT}


async def plaintext(request: Request) -> Response:
    return PlainTextResponse(TEXT)


async def json_endpoint(request: Request) -> Response:
    return JSONResponse(MESSAGE)


async def plaintext_sleep(request: Request) -> Response:
    await asyncio.sleep(0)
    return PlainTextResponse(TEXT)


async def json_sleep(request: Request) -> Response:
    await asyncio.sleep(0)
    return JSONResponse(MESSAGE)


class _Nothing:
    """An async context manager that does nothing: what the ``async with`` syntax itself costs."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        return None


async def plaintext_nothing(request: Request) -> Response:
    async with _Nothing():
        await asyncio.sleep(0)
    return PlainTextResponse(TEXT)


async def json_nothing(request: Request) -> Response:
    async with _Nothing():
        await asyncio.sleep(0)
    return JSONResponse(MESSAGE)


class _NothingSync:
    """A plain context manager that does nothing, as a scope usable with ``with`` would be."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


async def plaintext_with(request: Request) -> Response:
    with _NothingSync():
        await asyncio.sleep(0)
    return PlainTextResponse(TEXT)


async def json_with(request: Request) -> Response:
    with _NothingSync():
        await asyncio.sleep(0)
    return JSONResponse(MESSAGE)


async def plaintext_timeout(request: Request) -> Response:
    async with asyncio.timeout(30):
        await asyncio.sleep(0)
    return PlainTextResponse(TEXT)


async def json_timeout(request: Request) -> Response:
    async with asyncio.timeout(30):
        await asyncio.sleep(0)
    return JSONResponse(MESSAGE)


_WATCHED = ("request_aborted", "starlette.requests", "asyncio", "uvicorn", "uvloop")


async def stats(request: Request) -> Response:
    """Live objects after a full collection: a leak shows as a count that grows with requests."""
    gc.collect()
    watched: Counter[str] = Counter()
    for obj in gc.get_objects():
        module = getattr(type(obj), "__module__", None)  # a str, except for a few C types
        if isinstance(module, str) and module.startswith(_WATCHED):
            watched[type(obj).__name__] += 1
    return JSONResponse(
        {
            "pid": os.getpid(),
            "tasks": len(asyncio.all_tasks()),
            "gc_objects": len(gc.get_objects()),
            # Objects the cyclic GC has found unreachable so far: garbage that reference counting
            # could not free (reference cycles), a cost paid in GC pauses.
            "gc_collected": sum(generation["collected"] for generation in gc.get_stats()),
            "gc_collections": [generation["collections"] for generation in gc.get_stats()],
            "types": dict(watched.most_common()),
        }
    )


def _base_routes() -> list[Route]:
    return [
        Route("/plaintext", plaintext),
        Route("/json", json_endpoint),
        Route("/plaintext-sleep", plaintext_sleep),
        Route("/json-sleep", json_sleep),
        Route("/plaintext-nothing", plaintext_nothing),
        Route("/json-nothing", json_nothing),
        Route("/plaintext-with", plaintext_with),
        Route("/json-with", json_with),
        Route("/plaintext-timeout", plaintext_timeout),
        Route("/json-timeout", json_timeout),
    ]


def _token_routes() -> list[Route]:
    from request_aborted import request_aborted

    async def plaintext_token(request: Request) -> Response:
        token = request_aborted(request)
        async with token.scope():
            await asyncio.sleep(0)
        return PlainTextResponse(TEXT)

    async def json_token(request: Request) -> Response:
        token = request_aborted(request)
        async with token.scope():
            await asyncio.sleep(0)
        return JSONResponse(MESSAGE)

    return [Route("/plaintext-token", plaintext_token), Route("/json-token", json_token)]


def _middleware_routes() -> list[Route]:
    """The base routes with the token routes where the floor app has ``/plaintext-nothing``.

    Starlette tries routes in order, and each miss costs about 0.7 us in-process
    (``bench_cpu.py``). Appended after the ten base routes, (c)'s ``/plaintext-token`` paid six
    misses more than (h')'s ``/plaintext-nothing``, about 4 us per request and a bias of the
    (c)/(h') ratio; at the same index (and ``/json-token`` at ``/json-nothing``'s) both pay alike.
    """
    base = _base_routes()
    at = next(index for index, route in enumerate(base) if route.path == "/plaintext-nothing")
    return [*base[:at], *_token_routes(), *base[at:], Route("/stats", stats)]


# -- the variants bench_overhead.py compares ------------------------------------------------------


def bare() -> Starlette:
    """(a) Starlette without any middleware."""
    return Starlette(routes=[*_base_routes(), Route("/stats", stats)])


def middleware() -> Starlette:
    """(b) and (c): RequestAbortedMiddleware with its default options."""
    from request_aborted import RequestAbortedMiddleware

    return Starlette(
        routes=_middleware_routes(),
        middleware=[Middleware(RequestAbortedMiddleware)],
    )


def middleware_eager() -> Starlette:
    """(c') The middleware with ``watch_delay=0``: every handler that looks starts a watcher."""
    from request_aborted import RequestAbortedMiddleware

    return Starlette(
        routes=_middleware_routes(),
        middleware=[Middleware(RequestAbortedMiddleware, watch_delay=WATCH_DELAY)],
    )


class _NoOp(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await call_next(request)


def base_http() -> Starlette:
    """(e) A no-op ``BaseHTTPMiddleware``: the reference point most Starlette users know."""
    return Starlette(routes=_base_routes(), middleware=[Middleware(_NoOp)])


def fastapi_disconnect() -> Starlette:
    """(d) fastapi-disconnect's ``CancelOnDisconnectMiddleware`` (needs Python >= 3.12)."""
    from fastapi_disconnect import CancelOnDisconnectMiddleware

    return Starlette(routes=_base_routes(), middleware=[Middleware(CancelOnDisconnectMiddleware)])


class _Floor:
    """The least per-request work issue 3 demands of *any* implementation, for reference.

    A token object in the scope, a ``ContextVar`` for ``current_token()`` (set and reset), an
    ``async`` wrapper around ``receive`` that remembers a disconnect (the middleware owns
    ``receive``), and one around ``send`` that knows whether the response started and completed (a
    disconnect after completion is not an abort) and fires on an ``OSError`` from the server
    before the app sees it (hazard 8). Nothing else: no timeouts, no shutdown, no read-ahead, no
    watching. Whatever this costs, no middleware meeting the criteria costs less.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = _FloorRequest(receive, send)
        scope["floor.token"] = _FloorToken(request)
        reset = _floor_current.set(request)
        try:
            await self.app(scope, request.receive, request.send)
        finally:
            # Else scope -> token -> request -> the server's objects -> scope: a cycle.
            request.server_receive = request.server_send = None
            _floor_current.reset(reset)


class _FloorToken:
    __slots__ = ("source",)

    def __init__(self, source: _FloorRequest) -> None:
        self.source = source


class _FloorRequest:
    __slots__ = ("completed", "disconnected", "fired", "server_receive", "server_send", "started")

    def __init__(self, receive: Receive, send: Send) -> None:
        self.server_receive: Receive | None = receive
        self.server_send: Send | None = send
        self.started = False
        self.completed = False
        self.fired = False
        self.disconnected = False

    async def receive(self) -> Message:
        if self.disconnected:
            return {"type": "http.disconnect"}
        assert self.server_receive is not None
        message = await self.server_receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
            self.fired = self.fired or not self.completed
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.completed = True
        assert self.server_send is not None
        try:
            await self.server_send(message)
        except OSError:
            self.fired = True
            raise


_floor_current: ContextVar[_FloorRequest] = ContextVar("bench.floor")


def floor() -> Starlette:
    """(h), (h'), (h'') and (b-h): the reference floor, ``_Floor``, around the bare app's routes."""
    return Starlette(routes=_base_routes(), middleware=[Middleware(_Floor)])


# -- bench_disconnect_latency.py ------------------------------------------------------------------

# request key -> [entered, fired, stopped] in time.monotonic() seconds (system-wide CLOCK_MONOTONIC,
# so the client's own time.monotonic() readings are on the same clock).
_records: dict[str, list[float | None]] = {}
# request key -> when the server saw its connection close (``_seen``'s uvicorn protocols only).
seen_at: dict[str, float] = {}


def latency() -> ASGIApp:
    """``/wait/{key}`` blocks in ``token.scope()`` until the client leaves; ``/records`` reports.

    ``/stream/{key}`` does the same after the response started (one chunk sent), the case of a
    streaming response whose client goes away mid-stream. ``/raw-wait/{key}`` and
    ``/raw-stream/{key}`` are the control, served in front of Starlette and the middleware.
    ``/plaintext-token`` (the (c) endpoint of ``bench_overhead.py``) is the load wrk puts on the
    server while it measures under throughput load. ``/records`` answers
    ``{key: [entered, fired, stopped, seen]}``, *seen* being ``None`` unless the server runs
    ``_seen``'s protocols.
    """
    from request_aborted import RequestAbortedMiddleware, request_aborted

    def start(request: Request) -> tuple[list[float | None], CancellationToken, Registration]:
        record: list[float | None] = [time.monotonic(), None, None]
        _records[request.path_params["key"]] = record
        token = request_aborted(request)

        def fired(reason: BaseException) -> None:
            record[1] = time.monotonic()

        return record, token, token.register(fired)

    async def wait(request: Request) -> Response:
        record, token, registration = start(request)
        try:
            async with token.scope():
                await asyncio.sleep(30)
        finally:  # OperationCancelled, or whatever else stopped the handler
            record[2] = time.monotonic()
            registration.unregister()
        return PlainTextResponse("not aborted")

    async def stream(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            record, token, registration = start(request)
            try:
                async with token.scope():
                    yield b"ready\n"  # the client closes once it has read this
                    await asyncio.sleep(30)
            finally:
                record[2] = time.monotonic()
                registration.unregister()
            yield b"not aborted\n"

        return StreamingResponse(body(), media_type="text/plain")

    async def records(request: Request) -> Response:
        found = {key: [*record, seen_at.get(key)] for key, record in _records.items()}
        _records.clear()
        seen_at.clear()
        return JSONResponse(found)

    app = Starlette(
        routes=[
            Route("/plaintext", plaintext),
            *_token_routes(),
            Route("/wait/{key}", wait),
            Route("/stream/{key}", stream),
            Route("/records", records),
        ],
        middleware=[Middleware(RequestAbortedMiddleware)],
    )

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(("/raw-wait/", "/raw-stream/")):
            await raw(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch


async def raw(scope: Scope, receive: Receive, send: Send) -> None:
    """The control: no middleware, no Starlette; when does the server itself report the client gone?

    ``/raw-wait/{key}`` waits in ``receive()`` for ``http.disconnect`` before responding,
    ``/raw-stream/{key}`` after sending one chunk; both record it as fired and stopped at once.
    """
    prefix, key = scope["path"][1:].split("/", 1)
    record: list[float | None] = [time.monotonic(), None, None]
    _records[key] = record
    if prefix == "raw-stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ready\n", "more_body": True})
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            record[1] = record[2] = time.monotonic()
            return
