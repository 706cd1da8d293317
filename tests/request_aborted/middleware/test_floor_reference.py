"""The benchmark's floor (``_Floor``, bench/apps.py) does what the criteria ask of an unused token.

BENCHMARKS.md argues from it: whatever ``_Floor`` costs, no middleware meeting issue 3's criteria
costs less. That holds only if the floor really does the least those criteria demand, so it is held
to the same hand-driven server the middleware's own tests use.
"""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Receive, Scope, Send

from bench.apps import _Floor, _floor_current, _FloorRequest, _FloorToken
from request_aborted.testing import Exchange, Phase, Vanish

START = {"type": "http.response.start", "status": 200, "headers": []}


def test_the_floor_publishes_a_token_and_its_request_only_while_the_request_runs() -> None:
    seen: list[object] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = _floor_current.get()
        seen.append(request)
        assert isinstance(scope["floor.token"], _FloorToken)
        assert scope["floor.token"].source is request
        await send(START)
        await send({"type": "http.response.body", "body": b"ok"})

    exchange = asyncio.run(Exchange(_Floor(app)).run())
    assert exchange.body == b"ok"
    assert isinstance(seen[0], _FloorRequest)
    assert _floor_current.get(None) is None


def test_the_floor_fires_on_a_send_oserror_before_the_app_sees_it() -> None:
    seen: dict[str, bool] = {}
    holder: list[Exchange] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = _floor_current.get()
        await send(START)
        holder[0].vanish()
        try:
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        except OSError:
            seen["fired"] = request.fired
            raise

    exchange = Exchange(_Floor(app), spec_version="2.4")
    holder.append(exchange)
    with pytest.raises(OSError):
        asyncio.run(exchange.run())
    assert seen == {"fired": True}


@pytest.mark.parametrize(("vanish", "fired"), [(None, False), (Vanish.in_handler(), True)])
def test_the_floor_tells_a_client_that_left_from_a_response_that_completed(
    vanish: Vanish | None, fired: bool
) -> None:
    seen: dict[str, bool] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = _floor_current.get()
        assert (await receive())["type"] == "http.request"
        if vanish is None:
            await send(START)
            await send({"type": "http.response.body", "body": b"done"})
        assert (await receive())["type"] == "http.disconnect"
        assert (await receive())["type"] == "http.disconnect"  # remembered, not asked again
        seen["fired"] = request.fired

    exchange = asyncio.run(Exchange(_Floor(app), vanish=vanish).run())
    assert seen == {"fired": fired}
    assert exchange.disconnected_at is (None if vanish is None else Phase.HANDLER)
    assert exchange.disconnects_delivered == 1
