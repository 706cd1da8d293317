"""Finding the current request's token: ``current_token()`` and ``request_aborted(request)``.

Without the middleware both fail loudly with set-up advice. With it, the middleware publishes the
request in a ``ContextVar`` and the token in the ASGI scope; these tests publish them by hand the
same way, so they exercise the lookups alone.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from starlette.requests import Request
from starlette.websockets import WebSocket

from request_aborted import (
    CancellationToken,
    CancellationTokenSource,
    _context,
    current_token,
    request_aborted,
)


class PublishedRequest:
    """What the middleware puts in the context variable: the request's token and its knob."""

    def __init__(self, token: CancellationToken) -> None:
        self.token = token
        self.timeouts: list[float | str | None] = []

    def set_timeout(self, timeout: float | str | None) -> None:
        self.timeouts.append(timeout)


@contextmanager
def published(token: CancellationToken) -> Iterator[None]:
    reset = _context.current.set(PublishedRequest(token))
    try:
        yield
    finally:
        _context.current.reset(reset)


def http_scope(**extra: object) -> dict[str, object]:
    return {"type": "http", "method": "GET", "path": "/", "headers": [], **extra}


def test_current_token_outside_any_request_says_so_and_how_to_get_a_token() -> None:
    # A fresh context: nothing any other test published can leak in.
    with pytest.raises(RuntimeError, match=r"no request is being handled here") as caught:
        contextvars.Context().run(current_token)
    assert "take the token as a parameter" in str(caught.value)
    assert "not installed" not in str(caught.value)  # the middleware may well be installed


def test_current_token_returns_the_published_requests_token() -> None:
    source = CancellationTokenSource()
    with published(source.token):
        assert current_token() is source.token


def test_current_token_is_restored_when_the_request_ends() -> None:
    outer, inner = CancellationTokenSource(), CancellationTokenSource()

    def check() -> None:
        with published(outer.token):
            with published(inner.token):
                assert current_token() is inner.token
            assert current_token() is outer.token
        with pytest.raises(RuntimeError, match="RequestAbortedMiddleware"):
            current_token()

    contextvars.Context().run(check)


def test_current_token_reaches_spawned_tasks_and_worker_threads() -> None:
    source = CancellationTokenSource()

    async def main() -> tuple[CancellationToken, CancellationToken]:
        with published(source.token):
            in_task = await asyncio.create_task(asyncio.sleep(0, current_token()))
            in_thread = await asyncio.to_thread(current_token)
        return in_task, in_thread

    assert asyncio.run(main()) == (source.token, source.token)


def test_current_token_of_concurrent_requests_do_not_mix() -> None:
    async def handle(token: CancellationToken) -> bool:
        with published(token):
            await asyncio.sleep(0.01)
            return current_token() is token

    async def main() -> list[bool]:
        tokens = [CancellationTokenSource().token for _ in range(10)]
        return await asyncio.gather(*(handle(token) for token in tokens))

    assert asyncio.run(main()) == [True] * 10


def test_request_aborted_returns_the_token_stored_in_the_scope() -> None:
    source = CancellationTokenSource()
    request = Request(http_scope(**{_context.SCOPE_KEY: source.token}))
    assert request_aborted(request) is source.token


def test_request_aborted_works_for_websockets() -> None:
    source = CancellationTokenSource()

    async def receive() -> dict[str, object]:
        raise AssertionError("not used")

    async def send(message: object) -> None:
        raise AssertionError("not used")

    scope = {"type": "websocket", "path": "/ws", "headers": [], _context.SCOPE_KEY: source.token}
    websocket = WebSocket(scope, receive, send)
    assert request_aborted(websocket) is source.token


def test_request_aborted_without_the_middleware_raises_runtime_error_with_advice() -> None:
    with pytest.raises(RuntimeError, match=r"RequestAbortedMiddleware is not installed"):
        request_aborted(Request(http_scope()))
