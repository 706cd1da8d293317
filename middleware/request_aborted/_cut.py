"""Cutting a started response so that the client can tell it from a whole one.

Once the headers are out, a response the server cannot finish (its timeout fired, the server is
shutting down) has one honest ending left: an incomplete one. No terminating chunk, fewer bytes
than its ``Content-Length``, then the end of the connection; curl says ``(18) transfer closed with
outstanding read data remaining``. Sending the final (empty) body instead makes a cut export look
complete. Kestrel aborts the connection there too.

ASGI has no message for it. An app that returns without its final body message gets that ending
from every server we support (HTTP/1.1), but some of them also log it as the app's error, and one
never ends the connection (probed with curl, and read in their source):

=====================================  ======================================================
server                                 the app returns mid-response
=====================================  ======================================================
uvicorn (h11, httptools), also under   closes the connection, and logs ``ERROR: ASGI callable
gunicorn's ``UvicornWorker``           returned without completing response.`` unless the
                                       connection was already lost (``run_asgi``)
gunicorn's own ``asgi`` worker         the same: ``ERROR ... returned without completing the
                                       response; closing the connection`` unless it was lost
hypercorn (asyncio and trio), granian  closes the connection, nothing logged
daphne                                 nothing: the connection stays open until the client
                                       gives up
=====================================  ======================================================

(Raising instead is worse: uvicorn, hypercorn and granian log every exception with its
traceback.) So where the server lets us reach the connection we close it ourselves first:
uvicorn's request cycle and gunicorn's protocol hold its asyncio ``transport``, daphne's ``send``
is bound to the twisted request (``_servers`` finds them, the one place that reads servers'
internals). On the asyncio servers the app then waits until the server has heard the connection
is gone (its protocol's ``connection_lost`` ran, after which the transport has no protocol), so
the server's own check finds a lost client and stays quiet. Everywhere else returning is enough.

``close()``, not ``abort()``: what was written is still flushed, so the client keeps every byte
the response got out before the cut. A client that does not read it within ``FLUSH_GRACE`` gets
the connection aborted. HTTP/2 and HTTP/3 connections carry other requests' streams and are never
closed: returning leaves the stream to the server.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from ._servers import Transport, connection_transport, request_task, twisted_request

if TYPE_CHECKING:
    from starlette.types import Send

__all__ = ["FLUSH_GRACE", "cut_connection"]

FLUSH_GRACE: Final = 1.0
"""Seconds a cut response's last bytes may take to drain before the connection is aborted."""
_POLL: Final = 0.01
_HTTP1: Final = ("1.0", "1.1")


async def cut_connection(server_send: Send, http_version: str) -> None:
    """Close the HTTP/1 connection under a started response, where the server lets us find it.

    Returns once the server knows (asyncio servers) or at once (daphne, and servers that close
    the connection themselves when the app returns mid-response).
    """
    if http_version not in _HTTP1:
        return
    task = request_task()
    transport = connection_transport(server_send, task)
    if transport is not None:
        await _close(transport)
        return
    request = twisted_request(server_send, task)
    if request is not None:
        request.loseConnection()  # flushes what was written, then ends the connection


async def _close(transport: Transport) -> None:
    transport.close()
    loop = asyncio.get_running_loop()
    abort_at = loop.time() + FLUSH_GRACE
    give_up_at = abort_at + FLUSH_GRACE  # a transport that never lets go of its protocol
    delay = 0.0  # with nothing left to flush, connection_lost is already scheduled
    while transport.get_protocol() is not None:
        now = loop.time()
        if now >= give_up_at:
            return  # the server may log the unfinished response; the client still sees it cut
        if now >= abort_at:
            transport.abort()
            abort_at = give_up_at
        await asyncio.sleep(delay)
        delay = _POLL
