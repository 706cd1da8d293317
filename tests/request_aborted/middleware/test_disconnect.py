"""A client that vanishes in each phase of a request fires the token with ``ClientDisconnected``."""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest
from fastapi import BackgroundTasks, FastAPI
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from request_aborted import (
    ClientDisconnected,
    OperationCancelled,
    RequestAbortedMiddleware,
    current_token,
    request_aborted,
)
from request_aborted.testing import Exchange, Phase, Vanish


def wrap(*routes: Route) -> RequestAbortedMiddleware:
    return RequestAbortedMiddleware(Starlette(routes=list(routes)))


def test_disconnect_during_upload_fires_token_while_body_is_read() -> None:
    seen: dict[str, object] = {}

    async def upload(request: Request) -> Response:
        try:
            await request.body()
        except ClientDisconnect:
            seen["fired"] = request_aborted(request).is_cancellation_requested
            raise
        return PlainTextResponse("stored")

    exchange = Exchange(
        wrap(Route("/", upload, methods=["POST"])),
        method="POST",
        body=[b"a" * 100, b"b" * 100, b"c" * 100],
        vanish=Vanish.during_upload(after_bytes=150),
    )
    asyncio.run(exchange.run())
    assert seen == {"fired": True}
    assert exchange.disconnected_at is Phase.UPLOAD
    assert exchange.received_bytes == 200
    assert isinstance(exchange.reason, ClientDisconnected)
    assert exchange.status is None  # Starlette's 500 for ClientDisconnect went nowhere


def test_disconnect_during_upload_is_seen_by_the_pump_when_token_observed_first() -> None:
    async def upload(request: Request) -> Response:
        token = request_aborted(request)
        assert not token.is_cancellation_requested  # starts the pump
        await token.wait()
        return PlainTextResponse("never sent")

    exchange = Exchange(
        wrap(Route("/", upload, methods=["POST"])),
        method="POST",
        body=[b"x" * 10] * 5,
        vanish=Vanish.during_upload(after_bytes=20),
    )
    asyncio.run(exchange.run())
    assert exchange.disconnected_at is Phase.UPLOAD
    assert isinstance(exchange.reason, ClientDisconnected)


def test_disconnect_in_handler_interrupts_token_scope_and_runs_cleanup() -> None:
    seen: list[object] = []

    async def slow(request: Request) -> Response:
        try:
            async with request_aborted(request).scope():
                await asyncio.sleep(10)
        except OperationCancelled as exc:
            seen.append(exc.reason)
            raise
        finally:
            await asyncio.sleep(0)  # cleanup may still await
            seen.append("cleanup")
        return PlainTextResponse("never")

    exchange = Exchange(wrap(Route("/", slow)), vanish=Vanish.in_handler(delay=0.02))
    asyncio.run(exchange.run())
    assert isinstance(seen[0], ClientDisconnected)
    assert seen[1] == "cleanup"
    assert exchange.disconnected_at is Phase.HANDLER
    assert exchange.messages == []


def test_disconnect_in_handler_is_seen_by_polling_is_cancellation_requested() -> None:
    polls: list[int] = []

    async def polling(request: Request) -> Response:
        token = request_aborted(request)
        count = 0
        while not token.is_cancellation_requested:
            count += 1
            await asyncio.sleep(0.005)
        polls.append(count)
        return PlainTextResponse("too late")

    exchange = Exchange(wrap(Route("/", polling)), vanish=Vanish.in_handler(delay=0.03))
    asyncio.run(exchange.run())
    assert polls and polls[0] >= 1
    assert isinstance(exchange.reason, ClientDisconnected)
    assert exchange.status is None  # the late response went nowhere


def test_disconnect_in_handler_wakes_token_wait_with_the_reason() -> None:
    reasons: list[BaseException] = []

    async def waiting(request: Request) -> Response:
        reasons.append(await request_aborted(request).wait())
        return PlainTextResponse("too late")

    exchange = Exchange(wrap(Route("/", waiting)), vanish=Vanish.in_handler(delay=0.01))
    asyncio.run(exchange.run())
    assert len(reasons) == 1
    assert isinstance(reasons[0], ClientDisconnected)
    assert reasons[0] is exchange.reason


def test_disconnect_in_handler_before_first_await_fires_token() -> None:
    reasons: list[BaseException] = []

    async def waiting(request: Request) -> Response:
        reasons.append(await request_aborted(request).wait())
        return PlainTextResponse("too late")

    exchange = Exchange(wrap(Route("/", waiting)), vanish=Vanish.in_handler())
    asyncio.run(exchange.run())
    assert isinstance(reasons[0], ClientDisconnected)


def test_disconnect_unobserved_token_costs_nothing_and_request_finishes() -> None:
    async def quick(request: Request) -> Response:
        await asyncio.sleep(0.02)
        return PlainTextResponse("done")

    # Nobody looks at the token, so nobody reads receive(): the response simply goes nowhere.
    exchange = Exchange(wrap(Route("/", quick)), vanish=Vanish.in_handler())
    asyncio.run(exchange.run())
    assert exchange.receive_calls == 0
    assert exchange.status is None


@pytest.mark.parametrize("spec_version", ["2.0", "2.3", "2.4", None])
@pytest.mark.parametrize("disconnect", ["once", "repeat"])
def test_disconnect_during_streaming_response_stops_the_stream(
    spec_version: str | None, disconnect: Literal["once", "repeat"]
) -> None:
    produced: list[int] = []
    finished: list[str] = []

    async def stream(request: Request) -> Response:
        token = request_aborted(request)

        async def chunks() -> object:
            try:
                for i in range(1000):
                    token.raise_if_cancellation_requested()
                    produced.append(i)
                    yield f"{i}\n".encode()
                    await asyncio.sleep(0.001)
            finally:
                finished.append("closed")

        return StreamingResponse(chunks())  # type: ignore[arg-type]

    exchange = Exchange(
        wrap(Route("/", stream)),
        vanish=Vanish.during_response(after_chunks=3),
        spec_version=spec_version,
        disconnect=disconnect,
    )
    asyncio.run(exchange.run())
    assert exchange.status == 200
    assert exchange.disconnected_at is Phase.RESPONSE
    assert isinstance(exchange.reason, ClientDisconnected)
    assert exchange.body == b"0\n1\n2\n"
    assert len(produced) < 10
    assert finished == ["closed"]
    # Below 2.4 StreamingResponse's listener reads the disconnect (once); at 2.4 the failing send
    # may tell first. Either way the server is never asked again and again (hazard 6).
    if spec_version != "2.4":
        assert exchange.disconnects_delivered == 1
    assert exchange.disconnects_delivered <= 1


@pytest.mark.parametrize("spec_version", ["2.0", "2.3", "2.4", None])
def test_disconnect_during_streaming_response_fires_token_without_observation(
    spec_version: str | None,
) -> None:
    async def stream(request: Request) -> Response:
        async def chunks() -> object:
            for i in range(1000):
                yield f"{i}\n".encode()
                await asyncio.sleep(0.001)

        return StreamingResponse(chunks())  # type: ignore[arg-type]

    exchange = Exchange(
        wrap(Route("/", stream)), vanish=Vanish.during_response(), spec_version=spec_version
    )
    asyncio.run(exchange.run())
    # Below 2.4 StreamingResponse's own listener reads the disconnect; at 2.4 send() raises.
    assert isinstance(exchange.reason, ClientDisconnected)
    assert len(exchange.messages) < 10


def test_background_tasks_survive_the_end_of_response_disconnect() -> None:
    finished: list[bool] = []

    async def send_receipt() -> None:
        token = current_token()
        await asyncio.sleep(0.03)  # the server's "done" disconnect is read meanwhile
        finished.append(token.is_cancellation_requested)

    api = FastAPI()

    @api.post("/order")
    async def order(tasks: BackgroundTasks) -> dict[str, str]:
        assert not current_token().is_cancellation_requested  # the pump watches throughout
        tasks.add_task(send_receipt)
        return {"status": "accepted"}

    app = RequestAbortedMiddleware(api, watch_delay=0)  # the pump reads the "done" disconnect
    exchange = Exchange(app, method="POST", path="/order", body=b"{}")
    asyncio.run(exchange.run())
    assert exchange.body == b'{"status":"accepted"}'
    assert finished == [False]
    assert exchange.reason is None
    assert exchange.disconnects_delivered == 1
