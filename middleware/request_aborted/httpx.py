"""Outbound HTTP calls that stop when the request's token fires (extra ``[httpx]``).

::

    from request_aborted.httpx import cancellable_client

    client = cancellable_client(base_url="http://recommendations:8000", timeout=10)

    async def recommendations(user: int, token: CancellationToken) -> list[str]:
        response = await client.get(f"/for/{user}", extensions={"token": token})
        return response.json()

The token comes from ``request.extensions["token"]`` (``TOKEN_EXTENSION``) or, when that is
absent, from ``current_token()`` - the request being handled, if any. With a token:

* **When it fires, the call stops within milliseconds** with ``OperationCancelled(reason)``,
  whichever phase it is in: waiting for a pool slot, connecting, sending, waiting for the
  response, or reading the body. Its socket is shut down, so the upstream sees the disconnect at
  once (and, running this same middleware, cancels its own work).
* **The remaining budget travels**: each httpx timeout (connect, read, write, pool) becomes
  ``min(configured, remaining)``, and the remaining budget is sent downstream in a deadline header
  - ``x-request-timeout-ms: 1834`` by default, ``grpc-timeout: 1834m`` with
  ``deadline_header="grpc-timeout"``, none with ``deadline_header=None``. A timeout that fires
  because the budget ran out is reported as ``OperationCancelled`` with the token's own reason.
* **The connection pool survives**: httpcore 1.0.x leaks pool slots when a request is cancelled
  while its connection is being established (encode/httpcore #830, #1093), and leaks more under a
  native ``task.cancel()``. This transport never cancels inside httpcore: it aborts the request's
  socket instead, an error path httpcore cleans up properly, and it does the same when the *caller*
  is cancelled (``asyncio.timeout``, a task group), so those cannot leak slots either.

``CancellableTransport(inner)`` wraps any ``httpx.AsyncBaseTransport``. For httpx's own
``AsyncHTTPTransport`` it installs a network-backend wrapper in the transport's httpcore pool to
abort sockets (reaching into ``_pool``, as httpx offers no public hook); other transports (mock,
ASGI) are stopped by cancelling the task that drives them. Limitation: on an HTTP/2 connection the
socket is shared, so an aborted request is only abandoned, not cut off; it ends by its timeout.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Final

import httpx

from request_aborted import (
    DEFAULT_DEADLINE_HEADER,
    CancellationToken,
    DeadlineHeader,
    current_token,
)

from ._httpx_abort import install_backend, leave_queue
from ._httpx_exchange import Exchange

__all__ = ["TOKEN_EXTENSION", "CancellableTransport", "cancellable_client"]

TOKEN_EXTENSION: Final = "token"
"""``request.extensions`` key for the token: ``client.get(url, extensions={"token": token})``."""

_TIMEOUT_KEYS: Final = ("connect", "read", "write", "pool")
DEFAULT_LIMITS: Final = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's


class CancellableTransport(httpx.AsyncBaseTransport):
    """Wraps ``transport`` so a cancellation token can stop its requests; see the module doc."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        deadline_header: DeadlineHeader | str | None = DEFAULT_DEADLINE_HEADER,
    ) -> None:
        self._inner = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._header = None if deadline_header is None else DeadlineHeader.of(deadline_header)
        self._socket_abort = install_backend(self._inner)
        self._background: set[asyncio.Task[Any]] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        token = _token_for(request)
        if token is None or not token.can_be_cancelled:
            return await self._inner.handle_async_request(request)
        token.raise_if_cancellation_requested()
        self._apply_budget(request, token)
        on_abort = None
        if self._socket_abort:
            extensions = request.extensions

            def on_abort() -> None:
                leave_queue(self._inner, extensions)

        exchange = Exchange(token, self._background, on_abort)
        try:
            response = await exchange.step(lambda: self._inner.handle_async_request(request))
        except BaseException:
            exchange.close()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_CancellableStream(exchange, response.stream),
            extensions=response.extensions,
        )

    def _apply_budget(self, request: httpx.Request, token: CancellationToken) -> None:
        remaining = token.remaining()
        if remaining is None:
            return
        timeout = dict(request.extensions.get("timeout") or {})
        for key in _TIMEOUT_KEYS:
            configured = timeout.get(key)
            timeout[key] = remaining if configured is None else min(configured, remaining)
        request.extensions["timeout"] = timeout
        if self._header is not None:
            request.headers[self._header.name] = self._header.render(remaining)

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()  # the pool is closing: nothing of theirs is worth keeping
        if self._background:  # none under trio, where gather() would ask for an asyncio loop
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._inner.aclose()

    async def __aenter__(self) -> CancellableTransport:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()


class _CancellableStream(httpx.AsyncByteStream):
    """The response body: each read is a guarded step, and closing releases the token."""

    def __init__(self, exchange: Exchange, inner: httpx.AsyncByteStream) -> None:
        self._exchange = exchange
        self._inner = inner
        self._closed = False

    async def __aiter__(self) -> Any:
        try:
            async for chunk in self._exchange.iterate(self._inner):
                yield chunk
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._exchange.cleanup(self._inner.aclose)
        finally:
            self._exchange.close()


def _token_for(request: httpx.Request) -> CancellationToken | None:
    token = request.extensions.get(TOKEN_EXTENSION)
    if token is None:
        try:
            return current_token()
        except RuntimeError:  # not inside a request: a plain call
            return None
    if not isinstance(token, CancellationToken):
        raise TypeError(
            f'request.extensions["{TOKEN_EXTENSION}"] must be a CancellationToken, '
            f"got {type(token).__name__}"
        )
    return token


def cancellable_client(
    *,
    deadline_header: DeadlineHeader | str | None = DEFAULT_DEADLINE_HEADER,
    transport: httpx.AsyncBaseTransport | None = None,
    limits: httpx.Limits = DEFAULT_LIMITS,
    http2: bool = False,
    verify: Any = True,
    trust_env: bool = True,
    **client_options: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose requests stop when their token fires.

    Takes ``httpx.AsyncClient``'s options; ``limits``, ``http2`` and ``verify`` configure the
    default transport (pass ``transport=`` to wrap your own instead).
    """
    inner = transport or httpx.AsyncHTTPTransport(
        verify=verify, trust_env=trust_env, limits=limits, http2=http2
    )
    wrapped = CancellableTransport(inner, deadline_header=deadline_header)
    return httpx.AsyncClient(transport=wrapped, trust_env=trust_env, **client_options)
