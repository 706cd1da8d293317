"""Outbound HTTP calls that stop when the request's token fires (extra ``[httpx2]`` or ``[httpx]``).

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

**httpx or httpx2**: the same code drives either (httpx2 is the maintained fork, same API). The
package is ``module=httpx2`` / ``module=httpx`` if given, else the one the objects you pass come
from (``transport``, ``limits``, ``timeout``...), else httpx2 when it is installed, else httpx -
Starlette 1.10's own preference. Type hints are written against httpx; httpx2's are the same shape.

``CancellableTransport(inner)`` wraps any ``httpx.AsyncBaseTransport`` (or httpx2's). For httpx's
own ``AsyncHTTPTransport`` it installs a network-backend wrapper in the transport's httpcore pool
to abort sockets (reaching into ``_pool``, as httpx offers no public hook); other transports (mock,
ASGI) are stopped by cancelling the task that drives them. Limitation: on an HTTP/2 connection the
socket is shared, so an aborted request is only abandoned, not cut off; it ends by its timeout.
"""

from __future__ import annotations

import asyncio
import functools
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Final, cast

from request_aborted import (
    DEFAULT_DEADLINE_HEADER,
    CancellationToken,
    DeadlineHeader,
    current_token,
)

from ._httpx_abort import install_backend, leave_queue
from ._httpx_exchange import Exchange
from ._httpx_flavour import Flavour, flavour_of

if TYPE_CHECKING:
    import httpx
    from httpx import AsyncBaseTransport as _TransportBase
else:
    _TransportBase = object  # duck-typed: serves httpx's clients and httpx2's alike

__all__ = ["TOKEN_EXTENSION", "CancellableTransport", "cancellable_client"]

TOKEN_EXTENSION: Final = "token"
"""``request.extensions`` key for the token: ``client.get(url, extensions={"token": token})``."""

_TIMEOUT_KEYS: Final = ("connect", "read", "write", "pool")
_DEFAULT_LIMITS: Final = {"max_connections": 100, "max_keepalive_connections": 20}  # httpx's


class CancellableTransport(_TransportBase):
    """Wraps ``transport`` so a cancellation token can stop its requests; see the module doc.

    ``module`` (``httpx`` or ``httpx2``) is only needed without a ``transport``, to choose which
    package's ``AsyncHTTPTransport`` to create.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        deadline_header: DeadlineHeader | str | None = DEFAULT_DEADLINE_HEADER,
        module: ModuleType | None = None,
    ) -> None:
        self._flavour = flavour_of(transport, module=module)
        inner = transport if transport is not None else self._flavour.httpx.AsyncHTTPTransport()
        self._inner: httpx.AsyncBaseTransport = inner
        self._header = None if deadline_header is None else DeadlineHeader.of(deadline_header)
        self._socket_abort = install_backend(self._inner, self._flavour.httpcore)
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

        timeout_error = self._flavour.httpx.TimeoutException
        exchange = Exchange(token, self._background, on_abort, timeout_error)
        try:
            response = await exchange.step(lambda: self._inner.handle_async_request(request))
        except BaseException:
            exchange.close()
            raise
        stream_class = _stream_class(self._flavour.httpx.AsyncByteStream)
        return type(response)(
            status_code=response.status_code,
            headers=response.headers,
            stream=cast("httpx.AsyncByteStream", stream_class(exchange, response.stream)),
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


class _CancellableStream:
    """The response body: each read is a guarded step, and closing releases the token.

    Used through ``_stream_class``: a response accepts only its own package's byte streams.
    """

    def __init__(self, exchange: Exchange, inner: Any) -> None:
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


@functools.cache
def _stream_class(base: type) -> type[_CancellableStream]:
    """``_CancellableStream`` as a subclass of ``base``, httpx's or httpx2's ``AsyncByteStream``."""
    return cast(type[_CancellableStream], type("CancellableStream", (_CancellableStream, base), {}))


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
    limits: httpx.Limits | None = None,
    http2: bool = False,
    verify: Any = True,
    trust_env: bool = True,
    module: ModuleType | None = None,
    **client_options: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` (or ``httpx2.AsyncClient``) whose requests stop when their token
    fires.

    Takes ``AsyncClient``'s options; ``limits`` (default: httpx's 100 connections, 20 kept
    alive), ``http2`` and ``verify`` configure the default transport (pass ``transport=`` to wrap
    your own instead). The package is ``module`` (``httpx`` or ``httpx2``) if given, else the one
    your ``transport``, ``limits`` or ``timeout`` come from, else httpx2 if installed, else httpx.
    """
    flavour = flavour_of(transport, limits, *client_options.values(), module=module)
    return _client(
        flavour, deadline_header, transport, limits, http2, verify, trust_env, client_options
    )


def _client(
    flavour: Flavour,
    deadline_header: DeadlineHeader | str | None,
    transport: httpx.AsyncBaseTransport | None,
    limits: httpx.Limits | None,
    http2: bool,
    verify: Any,
    trust_env: bool,
    client_options: dict[str, Any],
) -> httpx.AsyncClient:
    package = flavour.httpx
    if limits is None:
        limits = package.Limits(**_DEFAULT_LIMITS)
    inner = transport or package.AsyncHTTPTransport(
        verify=verify, trust_env=trust_env, limits=limits, http2=http2
    )
    wrapped = CancellableTransport(inner, deadline_header=deadline_header, module=package)
    client: httpx.AsyncClient = package.AsyncClient(
        transport=wrapped, trust_env=trust_env, **client_options
    )
    return client
