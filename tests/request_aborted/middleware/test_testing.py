"""``request_aborted.testing``: the hand-made server behaves like the servers it emulates."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Receive, Scope, Send

from request_aborted import ClientDisconnected, RequestAbortedMiddleware
from request_aborted.testing import Exchange, Phase, Vanish


async def reader(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads every message up to the disconnect, then answers with what it got."""
    got: list[Message] = []
    while True:
        message = await receive()
        got.append(message)
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            break
    scope["got"] = got


def test_testing_exchange_builds_an_http_scope() -> None:
    exchange = asyncio.run(
        Exchange(reader, method="post", path="/a", query_string=b"q=1", spec_version=None).run()
    )
    scope = exchange.scope
    assert scope["method"] == "POST"
    assert scope["path"] == "/a"
    assert scope["query_string"] == b"q=1"
    assert "asgi" not in scope
    assert (b"host", b"testserver") in scope["headers"]
    assert exchange.token is None and exchange.reason is None


def test_testing_exchange_spec_version_goes_into_the_asgi_key() -> None:
    exchange = Exchange(reader, spec_version="2.4")
    assert exchange.scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}


def test_testing_exchange_body_pieces_keep_more_body_flags() -> None:
    exchange = asyncio.run(Exchange(reader, body=[b"a", b"", b"c"]).run())
    assert exchange.scope["got"] == [
        {"type": "http.request", "body": b"a", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"c", "more_body": False},
    ]
    assert exchange.received_bytes == 2


def test_testing_exchange_empty_body_is_one_final_message() -> None:
    exchange = asyncio.run(Exchange(reader).run())
    assert exchange.scope["got"] == [{"type": "http.request", "body": b"", "more_body": False}]


def test_testing_vanish_during_upload_cuts_the_body() -> None:
    exchange = Exchange(reader, body=[b"ab", b"cd", b"ef"], vanish=Vanish.during_upload(3))
    asyncio.run(exchange.run())
    assert [m.get("body") for m in exchange.scope["got"]] == [b"ab", b"cd", None]
    assert exchange.disconnected_at is Phase.UPLOAD


async def two_disconnects(scope: Scope, receive: Receive, send: Send) -> None:
    scope["first"] = await receive()
    scope["second"] = await asyncio.wait_for(receive(), 0.05)


@pytest.mark.parametrize("mode", ["once", "repeat"])
def test_testing_disconnect_modes_once_and_repeat(mode: str) -> None:
    exchange = Exchange(two_disconnects, vanish=Vanish.during_upload(0), disconnect=mode)  # type: ignore[arg-type]
    if mode == "once":
        with pytest.raises(TimeoutError):
            asyncio.run(exchange.run())
    else:
        asyncio.run(exchange.run())
        assert exchange.scope["second"] == {"type": "http.disconnect"}
    assert exchange.scope["first"] == {"type": "http.disconnect"}
    assert exchange.disconnects_delivered == (1 if mode == "once" else 2)


@pytest.mark.parametrize(("mode", "bodies"), [("once", 2), ("repeat", 0)])
def test_testing_unread_body_is_queued_once_or_dropped_repeat(mode: str, bodies: int) -> None:
    exchange = Exchange(reader, body=[b"a", b"b"], disconnect=mode)  # type: ignore[arg-type]
    exchange.vanish(Phase.HANDLER)
    asyncio.run(exchange.run())
    got = exchange.scope["got"]
    assert sum(m["type"] == "http.request" for m in got) == bodies


async def responder(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": [(b"X-A", b"1")]})
    for piece in (b"one", b"two", b"three"):
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    scope["after"] = await receive(), await receive()


def test_testing_records_the_response_and_the_end_of_response_disconnect() -> None:
    exchange = asyncio.run(Exchange(responder).run())
    assert exchange.status == 201
    assert exchange.headers["x-a"] == "1"
    assert exchange.body == b"onetwothree"
    assert exchange.completed
    assert exchange.disconnected_at is None
    assert exchange.scope["after"][1] == {"type": "http.disconnect"}
    assert len(exchange.messages) == 5


@pytest.mark.parametrize(("spec_version", "raises"), [("2.3", False), ("2.4", True)])
def test_testing_vanish_during_response_drops_or_raises(spec_version: str, raises: bool) -> None:
    exchange = Exchange(responder, vanish=Vanish.during_response(2), spec_version=spec_version)
    if raises:
        with pytest.raises(OSError):
            asyncio.run(exchange.run())
    else:
        asyncio.run(exchange.run())
    assert exchange.body == b"onetwo"
    assert exchange.disconnected_at is Phase.RESPONSE
    assert not exchange.completed
    assert len(exchange.messages) == (4 if raises else 5)


def test_testing_vanish_during_response_never_happens_after_completion() -> None:
    exchange = asyncio.run(Exchange(responder, vanish=Vanish.during_response(10)).run())
    assert exchange.completed
    assert exchange.disconnected_at is None


def test_testing_manual_vanish_infers_the_phase_and_is_idempotent() -> None:
    exchange = Exchange(reader)
    exchange.vanish()
    exchange.vanish(Phase.RESPONSE)
    assert exchange.disconnected_at is Phase.HANDLER


def test_testing_vanish_in_handler_after_a_delay() -> None:
    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        scope["gone"] = await receive()

    exchange = Exchange(slow, vanish=Vanish.in_handler(delay=0.02))
    asyncio.run(exchange.run())
    assert exchange.scope["gone"] == {"type": "http.disconnect"}
    assert exchange.disconnected_at is Phase.HANDLER


def test_testing_timeout_stops_a_hanging_app() -> None:
    async def hang(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        asyncio.run(Exchange(hang, timeout=0.01).run())


def test_testing_token_and_reason_come_from_the_scope_key() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await receive()

    exchange = Exchange(RequestAbortedMiddleware(app), vanish=Vanish.in_handler())
    asyncio.run(exchange.run())
    assert exchange.token is exchange.scope["request_aborted.token"]
    assert isinstance(exchange.reason, ClientDisconnected)
