"""A real, slow HTTP server for the httpx integration: uvicorn on 127.0.0.1 in a thread.

The server runs a small Starlette app in its own event loop, on a socket of its own, so a test's
client talks to it over real TCP: connections really open, stall and close. The app records when
it sees each client disconnect (``/wait``), which is how a test knows a socket was released.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class SlowServer:
    """Where the server listens, and what it has seen."""

    port: int
    disconnects: dict[str, float] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def slow_app(server: SlowServer) -> Starlette:
    async def wait(request: Request) -> Response:
        """Answer after ``seconds``, unless the client leaves first (then note when it did)."""
        key = request.query_params.get("key", "")
        server.requests.append(key)
        await request.body()
        try:
            async with asyncio.timeout(float(request.query_params.get("seconds", "30"))):
                while (await request.receive())["type"] != "http.disconnect":
                    pass
        except TimeoutError:
            return PlainTextResponse("late")
        server.disconnects[key] = time.perf_counter()
        return PlainTextResponse("gone")

    async def drip(request: Request) -> Response:
        chunks = int(request.query_params.get("chunks", "1000"))
        interval = float(request.query_params.get("interval", "0.05"))

        async def body() -> AsyncIterator[bytes]:
            for _ in range(chunks):
                yield b"x" * 1024
                await asyncio.sleep(interval)

        return StreamingResponse(body())

    async def headers(request: Request) -> Response:
        return JSONResponse(dict(request.headers))

    async def close(request: Request) -> Response:
        await asyncio.sleep(float(request.query_params.get("seconds", "0")))
        return PlainTextResponse("bye", headers={"connection": "close"})

    async def fast(request: Request) -> Response:
        delay = float(request.query_params.get("seconds", "0"))
        if delay:
            await asyncio.sleep(delay)
        return PlainTextResponse(json.dumps({"ok": True}))

    return Starlette(
        routes=[
            Route("/wait", wait),
            Route("/drip", drip),
            Route("/headers", headers),
            Route("/fast", fast),
            Route("/close", close),
        ]
    )


@contextmanager
def running_slow_server() -> Iterator[SlowServer]:
    """Start the app under uvicorn in a thread with its own event loop; stop it afterwards."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    state = SlowServer(port=sock.getsockname()[1])
    config = uvicorn.Config(
        slow_app(state),
        lifespan="off",
        log_level="critical",
        http="h11",
        ws="none",
        access_log=False,
        backlog=2048,
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
