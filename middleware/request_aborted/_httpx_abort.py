"""Aborting an httpcore request at the socket, so httpcore never sees a cancellation.

httpcore 1.0.x loses pool slots when a request is cancelled at the wrong moment (encode/httpcore
#830, #1093): a cancellation that lands after the pool assigned a new connection to the request,
but before the connection started connecting, leaves that connection ``CONNECTING`` forever; a
native ``task.cancel()`` also pierces the anyio shields around response cleanup and strands
``ACTIVE`` connections. Reproduced here with ``max_connections=2``: after a few hundred cancels
every slot is gone and each request ends in ``PoolTimeout``, with anyio cancel scopes as well as
with ``task.cancel()``.

So the request is aborted the way a network failure would end it, a path httpcore handles well:
a network backend wrapper tracks which socket each request is using (a ContextVar names the
request), and an abort shuts that socket down - the pending read or write returns at once and
httpcore's error path closes and releases the connection. A connect in progress is abandoned
(the connect attempt is ours to cancel, not httpcore's) and reported as ``ConnectError``; any
later network operation of an aborted request fails before it touches the wire.

The same code serves httpcore and httpcore2 (httpx2's): the classes below duck-type httpcore's
network interfaces, and raise the errors of whichever httpcore opened the stream (``core``).
"""

# httpcore's network interfaces take ``timeout`` arguments; this module implements them.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from ._loop import asyncio_only

if TYPE_CHECKING:  # the types are httpcore's; httpcore2's are the same shape
    from httpcore import AsyncNetworkBackend, AsyncNetworkStream

__all__ = ["AbortableBackend", "RequestAbort", "current_abort"]

T = TypeVar("T")

current_abort: ContextVar[RequestAbort | None] = ContextVar("request_aborted.httpx", default=None)


class RequestAbort:
    """The abort switch of one request: which sockets it is using, and whether it was aborted."""

    __slots__ = ("_connecting", "_streams", "aborted", "in_io")

    def __init__(self) -> None:
        self.aborted = False
        self.in_io = 0
        self._streams: set[AbortableStream] = set()
        self._connecting: set[asyncio.Future[None]] = set()

    def abort(self) -> None:
        """Stop this request's network activity now; call from the event loop's thread."""
        if self.aborted:
            return
        self.aborted = True
        for stream in list(self._streams):
            stream.shut_down()
        for waiter in list(self._connecting):
            if not waiter.done():
                waiter.set_result(None)

    def check(self, error: type[Exception]) -> None:
        if self.aborted:
            raise error("request aborted: its cancellation token fired")

    @contextlib.contextmanager
    def io(self, stream: AbortableStream) -> Iterator[None]:
        self._streams.add(stream)
        self.in_io += 1
        try:
            yield
        finally:
            self.in_io -= 1
            self._streams.discard(stream)

    async def connect(self, attempt: Callable[[], Awaitable[T]], error: type[Exception]) -> T:
        """Race a connect attempt with the abort; an abandoned attempt is cancelled (it is ours).

        ``error`` is the httpcore's ``ConnectError``: what an abandoned attempt reports.
        """
        self.check(error)
        loop = asyncio_only("request_aborted.httpx")
        aborted: asyncio.Future[None] = loop.create_future()
        task = asyncio.ensure_future(attempt())
        self._connecting.add(aborted)
        self.in_io += 1
        waiters: set[asyncio.Future[Any]] = {task, aborted}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            self.in_io -= 1
            self._connecting.discard(aborted)
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise error("request aborted while connecting")
        return task.result()


class AbortableStream:
    """Passes everything through; lets the request's abort shut the socket down under a read."""

    def __init__(self, inner: AsyncNetworkStream, core: ModuleType) -> None:
        self._inner = inner
        self._core = core

    def shut_down(self) -> None:
        ssl_object = self._inner.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            return  # shared by other requests' streams: never kill an HTTP/2 connection
        sock = self._inner.get_extra_info("socket")
        if sock is not None:
            _shut_down(sock)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        abort = current_abort.get()
        if abort is None:
            return await self._inner.read(max_bytes, timeout)
        abort.check(self._core.ReadError)
        with abort.io(self):
            return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        abort = current_abort.get()
        if abort is None:
            return await self._inner.write(buffer, timeout)
        abort.check(self._core.WriteError)
        with abort.io(self):
            return await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AbortableStream:
        abort = current_abort.get()
        if abort is None:
            tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
            return AbortableStream(tls, self._core)
        abort.check(self._core.ConnectError)
        with abort.io(self):
            tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return AbortableStream(tls, self._core)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _shut_down(sock: Any) -> None:
    """``shutdown(SHUT_RDWR)``: the peer gets a FIN and a pending read returns at once.

    uvloop hands out a ``PseudoSocket`` that refuses ``shutdown()`` (TypeError). Shutdown acts on
    the connection, not on the descriptor, so it is done on a duplicate of the descriptor and the
    duplicate closed; the transport keeps its own descriptor and closes it in its error path.
    """
    with contextlib.suppress(OSError):  # already closed, or reset by the peer
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except TypeError:
            with socket.socket(sock.family, sock.type, sock.proto, os.dup(sock.fileno())) as dup:
                dup.shutdown(socket.SHUT_RDWR)


class AbortableBackend:
    """Wraps httpcore's network backend so every stream it opens is an ``AbortableStream``."""

    def __init__(self, inner: AsyncNetworkBackend, core: ModuleType) -> None:
        self.inner = inner
        self.core = core

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> AbortableStream:
        def attempt() -> Awaitable[AsyncNetworkStream]:
            return self.inner.connect_tcp(host, port, timeout, local_address, socket_options)

        abort = current_abort.get()
        stream = await (
            attempt() if abort is None else abort.connect(attempt, self.core.ConnectError)
        )
        return AbortableStream(stream, self.core)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> AbortableStream:
        def attempt() -> Awaitable[AsyncNetworkStream]:
            return self.inner.connect_unix_socket(path, timeout, socket_options)

        abort = current_abort.get()
        stream = await (
            attempt() if abort is None else abort.connect(attempt, self.core.ConnectError)
        )
        return AbortableStream(stream, self.core)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def leave_queue(transport: object, extensions: dict[str, Any]) -> None:
    """Let an aborted request that waits for a pool slot leave the queue, without a cancellation.

    Cancelling a queued request races with the pool assigning it a fresh connection, which is the
    leak itself. Instead its "connection acquired" event is set with no connection: the request
    wakes, fails its own check, and the pool's error path removes it. If a connection *was* just
    assigned, the request proceeds to it and fails at its first network operation instead.
    """
    pool = getattr(transport, "_pool", None)
    for pool_request in list(getattr(pool, "_requests", ())):
        request = getattr(pool_request, "request", None)
        if getattr(request, "extensions", None) is extensions and pool_request.is_queued():
            event = getattr(pool_request, "_connection_acquired", None)
            if event is not None:
                event.set()


def install_backend(transport: object, core: ModuleType) -> bool:
    """Put an ``AbortableBackend`` under an ``httpx.AsyncHTTPTransport``'s pool, once.

    ``core`` is the transport's httpcore (httpcore, or httpcore2 under httpx2).

    httpx does not let callers choose httpcore's network backend, so this reaches into the
    transport's ``_pool``; transports of any other shape are left alone (``False``).
    """
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if pool is None or backend is None:
        return False
    if not isinstance(backend, AbortableBackend):
        pool._network_backend = AbortableBackend(backend, core)
    return True
