"""Reaching the token: ``current_token()``, ``request_aborted(request)`` and the scope key."""

from __future__ import annotations

import asyncio

import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from request_aborted import (
    CancellationToken,
    ClientDisconnected,
    RequestAbortedMiddleware,
    current_token,
    request_aborted,
)
from request_aborted.testing import Exchange, Vanish


def test_current_token_is_the_request_token_in_handler_and_spawned_task() -> None:
    tokens: list[CancellationToken] = []

    async def endpoint(request: Request) -> Response:
        tokens.append(current_token())
        tokens.append(request_aborted(request))
        tokens.append(request.scope["request_aborted.token"])

        async def child() -> CancellationToken:
            await asyncio.sleep(0)
            return current_token()

        tokens.append(await asyncio.create_task(child()))
        return PlainTextResponse("ok")

    exchange = asyncio.run(
        Exchange(RequestAbortedMiddleware(Starlette(routes=[Route("/", endpoint)]))).run()
    )
    assert exchange.token is not None
    assert tokens == [exchange.token] * 4


def test_current_token_in_sync_endpoint_stream_iterator_and_background_task() -> None:
    tokens: dict[str, CancellationToken] = {}

    def sync_endpoint(request: Request) -> Response:
        tokens["sync"] = current_token()

        async def chunks() -> object:
            tokens["stream"] = current_token()
            yield b"data"

        def background() -> None:
            tokens["background"] = current_token()

        return StreamingResponse(chunks(), background=BackgroundTask(background))  # type: ignore[arg-type]

    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", sync_endpoint)]))
    exchange = asyncio.run(Exchange(app).run())
    assert exchange.body == b"data"
    assert tokens == dict.fromkeys(["sync", "stream", "background"], exchange.token)


def test_current_token_differs_between_concurrent_requests() -> None:
    tokens: list[CancellationToken] = []

    async def endpoint(request: Request) -> Response:
        mine = current_token()
        await asyncio.sleep(0.01)
        assert current_token() is mine
        tokens.append(mine)
        return PlainTextResponse("ok")

    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", endpoint)]))

    async def main() -> list[Exchange]:
        return list(await asyncio.gather(*(Exchange(app).run() for _ in range(5))))

    exchanges = asyncio.run(main())
    assert len({id(t) for t in tokens}) == 5
    assert {id(e.token) for e in exchanges} == {id(t) for t in tokens}


def test_current_token_raises_runtime_error_without_middleware() -> None:
    errors: list[str] = []

    async def endpoint(request: Request) -> Response:
        for reach in (current_token, lambda: request_aborted(request)):
            try:
                reach()
            except RuntimeError as exc:
                errors.append(str(exc))
        return PlainTextResponse("ok")

    asyncio.run(Exchange(Starlette(routes=[Route("/", endpoint)])).run())
    assert len(errors) == 2
    assert all("RequestAbortedMiddleware" in e and "add_middleware" in e for e in errors)


def test_current_token_outside_any_request_raises_and_is_reset_after() -> None:
    with pytest.raises(RuntimeError, match="no request is being handled here"):
        current_token()

    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def main() -> None:
        await Exchange(RequestAbortedMiddleware(Starlette(routes=[Route("/", endpoint)]))).run()
        with pytest.raises(RuntimeError):
            current_token()

    asyncio.run(main())


def test_request_aborted_in_spawned_task_sees_the_disconnect() -> None:
    reasons: list[BaseException] = []

    async def endpoint(request: Request) -> Response:
        async def watcher() -> None:
            reasons.append(await current_token().wait())

        await asyncio.create_task(watcher())
        return PlainTextResponse("too late")

    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", endpoint)]))
    asyncio.run(Exchange(app, vanish=Vanish.in_handler(0.01)).run())
    assert isinstance(reasons[0], ClientDisconnected)
