"""Answers whether ``_servers.connection_transport`` finds the connection it is served on.

``/`` runs the probe as a bare ASGI app (``send`` is the server's own), ``/starlette/`` behind
Starlette's routing (``send`` is the error middleware's closure). The body is the peer address of
the transport found, or ``missing``; tests/e2e/test_server_transports.py compares it with the
client's own address.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

from request_aborted._servers import connection_transport, request_task


async def probe(scope: Scope, receive: Receive, send: Send) -> None:
    transport = connection_transport(send, request_task())
    if transport is None:
        body = b"missing"
    else:
        host, port = transport.get_extra_info("peername")[:2]
        body = f"{host}:{port}".encode()
    headers = [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


starlette_app = Starlette(routes=[Mount("/", app=probe)])


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"].startswith("/starlette/"):
        await starlette_app(scope, receive, send)
    else:
        await probe(scope, receive, send)
