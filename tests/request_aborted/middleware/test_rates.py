"""Minimum data rates (``min_send_rate``/``min_receive_rate``): a client too slow is a reason.

The server here is a fake whose ``send`` blocks the way uvicorn's does on backpressure (until the
"client" reads) and whose ``receive`` hands out the body as slowly as the test says. End-to-end
checks with real uvicorn and raw sockets are in ``tests/e2e/test_hostile_rates.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from request_aborted import (
    ClientTooSlow,
    MinDataRate,
    OperationCancelled,
    RequestAbortedMiddleware,
    current_token,
)
from request_aborted._context import current_request

START: Message = {"type": "http.response.start", "status": 200, "headers": []}
CHUNK = b"x" * 1000


class StalledReader:
    """A server whose client reads ``reads`` body chunks, then stops reading for good."""

    def __init__(self, reads: int, *, with_transport: bool = False) -> None:
        self.reads = reads
        self.sent: list[Message] = []
        self.unblocked = asyncio.Event()
        self.transport = _Transport(self.unblocked) if with_transport else None
        self.blocked_at: float | None = None

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and len(self.sent) > self.reads + 1:
            self.blocked_at = time.monotonic()
            await self.unblocked.wait()  # uvicorn: ``await self.flow.drain()``
            if self.transport is not None:
                return  # uvicorn after connection_lost: ``if self.disconnected: return``

    async def receive(self) -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class _Transport(asyncio.Transport):
    """Enough of an asyncio transport for ``abort()``: it ends the blocked send, as uvicorn's
    ``connection_lost`` does."""

    def __init__(self, unblocked: asyncio.Event) -> None:
        super().__init__()
        self.unblocked = unblocked
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True
        self.unblocked.set()


def http_scope(method: str = "GET", version: str = "1.1") -> Scope:
    return {
        "type": "http",
        "http_version": version,
        "method": method,
        "path": "/export",
        "raw_path": b"/export",
        "query_string": b"",
        "headers": [],
        "asgi": {"version": "3.0", "spec_version": "2.3"},
    }


class Recorder:
    def __init__(self) -> None:
        self.aborts: list[tuple[BaseException, float]] = []

    def __call__(self, scope: Scope, reason: BaseException, elapsed: float) -> None:
        self.aborts.append((reason, elapsed))


async def streaming_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An export: chunk after chunk, checking its token between them as a cursor does."""
    token = current_token()
    await send(START)
    while True:
        token.raise_if_cancellation_requested()
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})


def run_stalled(
    server: StalledReader,
    rate: MinDataRate,
    app: Callable[..., Any] = streaming_app,
    version: str = "1.1",
) -> tuple[Recorder, float]:
    recorder = Recorder()
    middleware = RequestAbortedMiddleware(app, min_send_rate=rate, on_abort=recorder)
    send: Callable[[Message], Any] = server.send
    if server.transport is not None:
        send = _bound_send(server)

    async def main() -> float:
        started = time.monotonic()
        await asyncio.wait_for(middleware(http_scope("GET", version), server.receive, send), 10)
        return time.monotonic() - started

    return recorder, asyncio.run(main())


def _bound_send(server: StalledReader) -> Callable[[Message], Any]:
    """uvicorn's shape: ``send`` is a method of an object that holds the ``transport``."""

    class Cycle:
        def __init__(self) -> None:
            self.transport = server.transport

        async def send(self, message: Message) -> None:
            await server.send(message)

    return Cycle().send


def test_a_stalled_reader_fires_client_too_slow_after_the_grace_period() -> None:
    server = StalledReader(reads=3)
    recorder, _ = run_stalled(server, MinDataRate(bytes_per_second=100_000, grace=0.3))

    ((reason, _),) = recorder.aborts
    assert isinstance(reason, ClientTooSlow)
    assert reason.direction == "send"
    assert server.blocked_at is not None
    # Cut at the deadline: no sooner than the grace period (chunks are tiny against the rate),
    # counted from the send's start, a hair before the fake server noted it blocked.
    cut_after = time.monotonic() - server.blocked_at
    assert cut_after >= 0.29
    # The response had started: nothing more is sent for it, it is cut where it stands.
    assert server.sent[-1]["more_body"] is True


def test_a_stalled_readers_connection_is_aborted_where_the_server_allows_it() -> None:
    server = StalledReader(reads=2, with_transport=True)
    recorder, elapsed = run_stalled(server, MinDataRate(bytes_per_second=100_000, grace=0.2))

    ((reason, _),) = recorder.aborts
    assert isinstance(reason, ClientTooSlow)
    assert server.transport is not None and server.transport.aborted
    assert elapsed < 5  # generous: the cut is at 0.2 s


def test_an_http2_connection_is_never_aborted_its_send_is_cancelled_instead() -> None:
    server = StalledReader(reads=2, with_transport=True)
    recorder, elapsed = run_stalled(
        server, MinDataRate(bytes_per_second=100_000, grace=0.2), version="2"
    )

    ((reason, _),) = recorder.aborts
    assert isinstance(reason, ClientTooSlow)
    assert server.transport is not None and not server.transport.aborted  # other streams live
    assert elapsed < 5


def test_the_deadline_of_a_blocked_send_grows_with_what_it_must_flush() -> None:
    # 1,000-byte chunks at 2,000 bytes/s: this chunk and the previous one need 1 s, past the grace.
    server = StalledReader(reads=3)
    started = time.monotonic()
    recorder, _ = run_stalled(server, MinDataRate(bytes_per_second=2000, grace=0.1))

    assert isinstance(recorder.aborts[0][0], ClientTooSlow)
    assert server.blocked_at is not None
    assert time.monotonic() - server.blocked_at >= 0.99
    assert time.monotonic() - started < 8


def test_the_app_blocked_in_send_gets_operation_cancelled_with_the_reason() -> None:
    seen: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await streaming_app(scope, receive, send)
        except OperationCancelled as exc:
            seen.append(exc.reason)
            raise

    run_stalled(StalledReader(reads=1), MinDataRate(bytes_per_second=100_000, grace=0.1), app)

    (reason,) = seen
    assert isinstance(reason, ClientTooSlow)
    assert "read the response slower than 100000 bytes/s" in str(reason)


def test_a_reader_that_keeps_up_is_never_cut_however_long_the_response() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)  # the socket takes every chunk at once

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        for _ in range(30):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
            await asyncio.sleep(0.01)  # the app is slow, not the client: 0.3 s against 0.05 s
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    recorder = Recorder()
    middleware = RequestAbortedMiddleware(
        app, min_send_rate=MinDataRate(bytes_per_second=10**9, grace=0.05), on_abort=recorder
    )
    asyncio.run(middleware(http_scope(), StalledReader(0).receive, send))

    assert recorder.aborts == []
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


# -- receive ---------------------------------------------------------------------------------


class Trickle:
    """A client that sends its body ``piece`` bytes every ``every`` seconds, ``pieces`` times."""

    def __init__(self, piece: int, every: float, pieces: int) -> None:
        self.piece, self.every, self.pieces = piece, every, pieces
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.pieces == 0:
            await asyncio.Event().wait()
        await asyncio.sleep(self.every)
        self.pieces -= 1
        return {"type": "http.request", "body": b"y" * self.piece, "more_body": self.pieces > 0}

    async def send(self, message: Message) -> None:
        self.sent.append(message)


async def body_reader(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, then answers 201; a disconnect ends it the way Starlette does."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            current_token().raise_if_cancellation_requested()
            return
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"stored"})


def run_upload(
    client: Trickle, rate: MinDataRate, app: Callable[..., Any] = body_reader
) -> Recorder:
    recorder = Recorder()
    middleware = RequestAbortedMiddleware(app, min_receive_rate=rate, on_abort=recorder)
    asyncio.run(asyncio.wait_for(middleware(http_scope("POST"), client.receive, client.send), 10))
    return recorder


def test_a_trickling_body_is_answered_408_and_the_connection_closed() -> None:
    client = Trickle(piece=10, every=0.05, pieces=1000)  # 200 bytes/s
    recorder = run_upload(client, MinDataRate(bytes_per_second=10_000, grace=0.3))

    ((reason, elapsed),) = recorder.aborts
    assert isinstance(reason, ClientTooSlow)
    assert reason.direction == "receive"
    assert reason.transferred is not None and reason.transferred < 10_000 * 0.3
    assert 0.3 <= elapsed < 5
    start, body = client.sent
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    assert b'"title": "Request Timeout"' in body["body"]


def test_a_body_that_arrives_at_the_rate_is_read_whole() -> None:
    client = Trickle(piece=1000, every=0.02, pieces=30)  # 50,000 bytes/s for 0.6 s
    recorder = run_upload(client, MinDataRate(bytes_per_second=10_000, grace=0.1))

    assert recorder.aborts == []
    assert client.sent[0]["status"] == 201


def test_an_app_slow_to_read_is_not_the_clients_fault() -> None:
    async def slow_reader(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.5)  # past the grace period before the first read
        await body_reader(scope, receive, send)

    client = Trickle(piece=1000, every=0.0, pieces=5)
    recorder = run_upload(client, MinDataRate(bytes_per_second=10_000, grace=0.1), slow_reader)

    assert recorder.aborts == []
    assert client.sent[0]["status"] == 201


# -- off ---------------------------------------------------------------------------------------


def test_without_rates_the_app_gets_the_requests_own_receive_and_send() -> None:
    """Off means off: no wrapper between the app and the request's channel."""
    seen: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = current_request()
        seen.append(getattr(receive, "__self__", None) is request)
        seen.append(getattr(send, "__self__", None) is request)
        await send(START)
        await send({"type": "http.response.body", "body": b""})

    async def noop_send(message: Message) -> None:
        pass

    asyncio.run(RequestAbortedMiddleware(app)(http_scope(), StalledReader(0).receive, noop_send))
    assert seen == [True, True]


@pytest.mark.parametrize(
    ("rate", "grace"), [(0, 5.0), (-1, 5.0), (240, -1.0)], ids=["zero", "negative", "grace"]
)
def test_a_rate_that_cannot_hold_is_refused(rate: float, grace: float) -> None:
    with pytest.raises(ValueError):
        MinDataRate(bytes_per_second=rate, grace=grace)
