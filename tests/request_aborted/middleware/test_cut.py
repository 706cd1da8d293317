"""A response that already started when its timeout or shutdown came is cut, never made whole.

The servers themselves are in ``tests/e2e/test_deployment.py`` (curl exits 18 on every one, and
nothing but our line is logged). Here the fakes play the parts those servers play: uvicorn's
request cycle, whose ``send`` is a method and whose ``transport`` is the connection, and which logs
an ERROR for an unfinished response unless the connection was lost before the app returned;
daphne's ``send``, a ``functools.partial`` over the twisted request.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from request_aborted import (
    CancellationTokenSource,
    RequestAbortedMiddleware,
    ServerShuttingDown,
    _cut,
    current_token,
)


class FakeTransport:
    """An asyncio transport as far as closing goes: ``close()`` waits for the buffer to drain."""

    def __init__(self, protocol: Cycle, *, drains: bool = True) -> None:
        self.protocol: Cycle | None = protocol
        self.drains = drains  # False: a client that stopped reading
        self.closed = self.aborted = False

    def close(self) -> None:
        self.closed = True
        if self.drains:
            asyncio.get_running_loop().call_soon(self._lost)

    def abort(self) -> None:
        self.aborted = True
        asyncio.get_running_loop().call_soon(self._lost)

    def _lost(self) -> None:
        if self.protocol is not None:
            self.protocol.connection_lost()
            self.protocol = None

    def get_protocol(self) -> object:
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Cycle:
    """uvicorn's ``RequestResponseCycle`` and protocol in one: ``send`` is its method."""

    def __init__(self, *, drains: bool = True) -> None:
        self.transport = FakeTransport(self, drains=drains)
        self.sent: list[Message] = []
        self.disconnected = False
        self.lost = asyncio.Event()

    def connection_lost(self) -> None:
        self.disconnected = True
        self.lost.set()

    async def receive(self) -> Message:
        if not self.sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.lost.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if not self.disconnected:
            self.sent.append(message)

    async def run(self, app: RequestAbortedMiddleware, http_version: str = "1.1") -> bool:
        """Run ``app``; whether uvicorn would stay quiet (the connection lost by the return)."""
        await app(scope(http_version), self.receive, self.send)
        return self.disconnected


def scope(http_version: str = "1.1") -> Scope:
    return {"type": "http", "method": "GET", "path": "/export", "headers": [],
            "http_version": http_version, "asgi": {"version": "3.0"}}  # fmt: skip


async def export(scope: Scope, receive: Receive, send: Send) -> None:
    """Streams one chunk, then waits under its token for a second that never comes."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"row 1\n", "more_body": True})
    async with current_token().scope():
        await asyncio.sleep(10)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def run_cycle(app: RequestAbortedMiddleware, cycle_options: dict[str, bool] | None = None,
              http_version: str = "1.1") -> tuple[Cycle, bool]:  # fmt: skip
    async def main() -> tuple[Cycle, bool]:
        cycle = Cycle(**(cycle_options or {}))
        return cycle, await cycle.run(app, http_version)

    return asyncio.run(main())


def test_cut_timeout_after_start_closes_the_connection_before_the_app_returns() -> None:
    cycle, lost_by_return = run_cycle(RequestAbortedMiddleware(export, timeout=0.05))

    assert cycle.sent[-1] == {"type": "http.response.body", "body": b"row 1\n", "more_body": True}
    assert cycle.transport.closed and not cycle.transport.aborted  # flushed, then closed
    assert lost_by_return  # uvicorn sees a lost connection, not an app that quit mid-response


def test_cut_shutdown_after_start_closes_the_connection_too() -> None:
    shutdown = CancellationTokenSource()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        asyncio.get_running_loop().call_later(0.05, shutdown.cancel, ServerShuttingDown())
        await export(scope, receive, send)

    cycle, lost_by_return = run_cycle(RequestAbortedMiddleware(app, shutdown=shutdown.token))

    assert [m["type"] for m in cycle.sent] == ["http.response.start", "http.response.body"]
    assert cycle.transport.closed
    assert lost_by_return


def test_cut_a_client_that_does_not_read_gets_the_connection_aborted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_cut, "FLUSH_GRACE", 0.05)

    cycle, lost_by_return = run_cycle(
        RequestAbortedMiddleware(export, timeout=0.05), {"drains": False}
    )

    assert cycle.transport.closed and cycle.transport.aborted
    assert lost_by_return


def test_cut_http2_leaves_the_connection_to_the_server() -> None:
    """It carries other requests' streams: the server ends this one when the app returns."""
    cycle, lost_by_return = run_cycle(RequestAbortedMiddleware(export, timeout=0.05),
                                      http_version="2")  # fmt: skip

    assert not cycle.transport.closed
    assert not lost_by_return
    assert cycle.sent[-1]["more_body"] is True


def test_cut_a_request_that_completed_is_not_touched() -> None:
    async def whole(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"all", "more_body": False})
        async with current_token().scope():
            await asyncio.sleep(10)  # background work after the response, cut by the timeout

    cycle, _ = run_cycle(RequestAbortedMiddleware(whole, timeout=0.05))

    assert not cycle.transport.closed
    assert cycle.sent[-1] == {"type": "http.response.body", "body": b"all", "more_body": False}


def body_then_quiet(sent: list[Message]) -> Receive:
    """A client that sent an empty body and then says nothing more for 10 s (it stays)."""

    async def receive() -> Message:
        if not sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    return receive


def test_cut_daphne_request_loses_its_connection() -> None:
    class TwistedRequest:
        lost = False

        def loseConnection(self) -> None:  # twisted's name
            self.lost = True

    sent: list[Message] = []

    async def handle_reply(request: TwistedRequest, message: Message) -> None:
        sent.append(message)

    request = TwistedRequest()
    app = RequestAbortedMiddleware(export, timeout=0.05)
    asyncio.run(app(scope(), body_then_quiet(sent), functools.partial(handle_reply, request)))

    assert request.lost
    assert sent[-1]["more_body"] is True


def test_cut_a_server_we_cannot_reach_gets_no_final_body_either() -> None:
    """hypercorn and granian: returning mid-response is the cut, they close the connection."""
    sent: list[Message] = []

    async def server_send(message: Message) -> None:
        sent.append(message)

    asyncio.run(
        RequestAbortedMiddleware(export, timeout=0.05)(scope(), body_then_quiet(sent), server_send)
    )

    assert [m.get("more_body") for m in sent] == [None, True]
