"""uvicorn's connection is still found where ``_servers`` looks for it, in every setup installed.

A client too slow to read has its connection aborted through uvicorn's transport, which
``_servers.connection_transport`` finds in uvicorn's internals (nothing in ASGI exposes it). These
tests run a real uvicorn, in this process on 127.0.0.1, for every HTTP implementation and event loop
installed, and fail the day a uvicorn release stops matching: the library would silently take the
fallback (cancelling the blocked ``send()``) and a stalled reader would keep its connection until
it reads or leaves. The transport found must be the one of the client's own connection. The other
servers, each in its own process: ``tests/e2e/test_server_transports.py``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

from request_aborted._servers import connection_transport

HTTP = [
    "h11",
    pytest.param(
        "httptools",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("httptools") is None, reason="httptools is not installed"
        ),
    ),
]
LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed"
        ),
    ),
]


class Probe:
    """An ASGI app that looks for the transport the way the rate watch does, and answers."""

    def __init__(self) -> None:
        self.peer: tuple[str, int] | None = None
        self.found = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = connection_transport(send, asyncio.current_task())
        self.found = transport is not None
        if transport is not None:
            self.peer = transport.get_extra_info("peername")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def serve_one_request(app: Callable[..., Any], http: str, loop: str) -> tuple[str, int]:
    """Run uvicorn on a free port, send it one request, stop it; the client's own address."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # the request waits in the backlog until uvicorn has started
    config = uvicorn.Config(app, http=http, loop=loop, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    # In a thread of its own: its own event loop, and no signal handlers of ours replaced.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        with client:
            client.sendall(b"GET /probe HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := client.recv(4096):
                answer += chunk
            address: tuple[str, int] = client.getsockname()
        assert answer.startswith(b"HTTP/1.1 204"), answer
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()
    assert not thread.is_alive()
    return address


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("http", HTTP)
def test_uvicorns_transport_is_found_through_its_own_send(http: str, loop: str) -> None:
    probe = Probe()
    address = serve_one_request(probe, http, loop)
    assert probe.found, f"uvicorn ({http}, {loop}) no longer matches _servers.connection_transport"
    assert probe.peer == address


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("http", HTTP)
def test_uvicorns_transport_is_found_under_starlettes_wrapped_send(http: str, loop: str) -> None:
    probe = Probe()
    # Starlette's error middleware hands the app a closure, not uvicorn's bound send: the
    # transport is found through the request task instead.
    address = serve_one_request(Starlette(routes=[Mount("/", app=probe)]), http, loop)
    assert probe.found, f"uvicorn ({http}, {loop}) no longer matches _servers.connection_transport"
    assert probe.peer == address
