"""``request_aborted.httpx`` serves httpx and httpx2: which one a client is built from, and why.

A response must come from the client's own package (httpx2's ``Response`` refuses httpx's byte
streams) and errors must be the caller's package's, or ``except httpx2.HTTPError`` would miss them.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import pytest

from request_aborted import CancellationTokenSource
from request_aborted.httpx import TOKEN_EXTENSION, CancellableTransport, cancellable_client

from ._slow_server import SlowServer
from ._support import run


def test_a_client_and_its_responses_and_errors_come_from_the_chosen_package(
    slow_server: SlowServer, hx: ModuleType
) -> None:
    async def main() -> tuple[Any, Any, BaseException]:
        token = CancellationTokenSource(timeout=5).token
        async with cancellable_client(module=hx) as client:
            response = await client.get(
                f"{slow_server.url}/headers", extensions={TOKEN_EXTENSION: token}
            )
            with pytest.raises(Exception) as caught:  # nothing listens on port 9 (discard)
                await client.get("http://127.0.0.1:9/", extensions={TOKEN_EXTENSION: token})
            return client, response, caught.value

    client, response, error = run(main())
    assert isinstance(client, hx.AsyncClient)
    assert isinstance(response, hx.Response)
    assert response.status_code == 200
    assert isinstance(error, hx.ConnectError)


def test_the_package_follows_the_objects_passed(hx: ModuleType) -> None:
    by_limits = cancellable_client(limits=hx.Limits(max_connections=3))
    by_timeout = cancellable_client(timeout=hx.Timeout(3.0))
    by_transport = cancellable_client(transport=hx.AsyncHTTPTransport())
    for client in (by_limits, by_timeout, by_transport):
        assert isinstance(client, hx.AsyncClient)
        run(client.aclose())


def test_a_wrapped_transport_answers_with_its_own_packages_response(hx: ModuleType) -> None:
    async def main() -> Any:
        transport = CancellableTransport(hx.MockTransport(lambda _: hx.Response(204)))
        async with hx.AsyncClient(transport=transport) as client:
            token = CancellationTokenSource(timeout=5).token
            return await client.get("http://upstream/", extensions={TOKEN_EXTENSION: token})

    response = run(main())
    assert isinstance(response, hx.Response)
    assert response.status_code == 204


def test_without_a_hint_the_client_is_httpx2_when_installed() -> None:
    """Starlette 1.10's preference: httpx2 is the maintained line."""
    expected = "httpx2" if importlib.util.find_spec("httpx2") else "httpx"
    client = cancellable_client()
    assert type(client).__module__.partition(".")[0] == expected
    run(client.aclose())


def test_a_module_that_is_not_httpx_is_refused_with_what_to_pass() -> None:
    with pytest.raises(ValueError, match="pass module=httpx or module=httpx2"):
        cancellable_client(module=pytest)
