"""What the per-request fast path must still get right after being made cheap.

Every request pays for the middleware, whether or not it looks at its token, so the request's
source and connection state are one object, the running loop is found through a cache, the
watcher exists only once watching starts, and nothing the request leaves behind forms a
reference cycle. These tests pin
down the correctness those shortcuts must keep.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Literal

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send

from request_aborted import (
    ClientDisconnected,
    OperationCancelled,
    RequestAbortedMiddleware,
    RequestTimedOut,
    current_token,
    request_aborted,
)
from request_aborted._watcher import Watchlist
from request_aborted.testing import Exchange, Vanish

from .test_hazards import routes

START: Message = {"type": "http.response.start", "status": 200, "headers": []}
BODY: Message = {"type": "http.response.body", "body": b"ok"}


@pytest.mark.parametrize("ending", ["unobserved", "observed", "disconnected", "timed-out"])
def test_a_finished_request_leaves_nothing_for_the_cyclic_gc(
    ending: Literal["unobserved", "observed", "disconnected", "timed-out"],
) -> None:
    """The token outlives the request and the server keeps the scope that holds it; if the
    request kept the token or the server's receive/send, every request would be cyclic garbage.
    The Exchange plays a server the way uvicorn is built: its receive/send are bound methods of
    the object that holds the scope."""

    async def handler(request: Request) -> Response:
        if ending == "unobserved":
            return PlainTextResponse("ok")
        async with request_aborted(request).scope():
            await asyncio.sleep(0 if ending == "observed" else 5)
        return PlainTextResponse("ok")

    app = routes(("/", handler), timeout=0.01 if ending == "timed-out" else None)
    vanish = Vanish.in_handler(0.005) if ending == "disconnected" else None

    async def main() -> list[str]:
        await Exchange(app, vanish=vanish).run()  # warm what is created once
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(20):
                exchange = await Exchange(app, vanish=vanish).run()
                assert exchange.token is not None
            del exchange  # the last one too: all of them are now unreachable
            gc.collect()
            return [
                type(obj).__qualname__
                for obj in gc.garbage
                if type(obj).__module__.startswith("request_aborted")
            ]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()

    assert asyncio.run(main()) == []


def test_the_same_middleware_serves_one_loop_after_another() -> None:
    """Test suites and reloaders run a new loop in the same thread: the cached loop must not
    outlive its loop, or timers and watchers would land on a closed one."""
    reasons: list[BaseException | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reasons.append(await current_token().wait())

    middleware = RequestAbortedMiddleware(app, timeout=0.01)
    for _ in range(3):
        asyncio.run(Exchange(middleware).run())
    assert [type(reason) for reason in reasons] == [RequestTimedOut] * 3


def test_a_request_token_scope_on_another_threads_loop_interrupts_that_loop() -> None:
    """A sync endpoint may run its own loop in its worker thread with the request's token: the
    scope must interrupt the task on *that* loop, not look for one on the request's loop."""
    outcome: list[str] = []

    def sync_endpoint(request: Request) -> Response:
        token = request_aborted(request)

        async def work() -> None:
            try:
                async with token.scope():
                    await asyncio.sleep(5)
            except OperationCancelled as cancelled:
                outcome.append(type(cancelled.reason).__name__)

        asyncio.run(work())
        return PlainTextResponse("done")

    exchange = Exchange(routes(("/", sync_endpoint)), vanish=Vanish.in_handler(0.05))
    asyncio.run(asyncio.wait_for(exchange.run(), 5))
    assert outcome == ["ClientDisconnected"]
    assert isinstance(exchange.reason, ClientDisconnected)


def test_receive_and_send_kept_past_the_request_are_closed() -> None:
    """A task that outlives its request gets a disconnect from receive() and an error from
    send(): the connection belongs to the server again."""
    kept: list[tuple[Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kept.append((receive, send))
        await send(START)
        await send(BODY)

    async def main() -> None:
        await Exchange(RequestAbortedMiddleware(app)).run()
        receive, send = kept[0]
        assert await receive() == {"type": "http.disconnect"}
        with pytest.raises(RuntimeError, match="request is over"):
            await send(BODY)

    asyncio.run(main())


# -- watch_delay: the watchlist ------------------------------------------------------------------


class _Channel:
    """Stands in for a request on the watchlist; notes when its watching started (loop time)."""

    def __init__(self, name: str, started: list[str], done: asyncio.Event | None = None) -> None:
        self.name = name
        self.started = started
        self.done = done
        self.started_at: float | None = None
        self.completed = False  # still running when its turn comes

    def start_watching(self) -> None:
        self.started.append(self.name)
        self.started_at = asyncio.get_running_loop().time()
        if self.done is not None:
            self.done.set()


def test_the_watchlist_starts_each_request_a_delay_or_two_after_it_joined_with_one_timer() -> None:
    started: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        watchlist = Watchlist(loop, 0.05)
        both = asyncio.Event()
        first, second = _Channel("first", started), _Channel("second", started, both)
        finished = _Channel("finished", started)
        finished.completed = True  # its response is out by its turn: not even asked to start
        first_at = loop.time()
        watchlist.add(first)
        watchlist.add(finished)
        await asyncio.sleep(0.02)
        second_at = loop.time()
        watchlist.add(second)
        timers = [handle for handle in loop._scheduled if not handle.cancelled()]  # type: ignore[attr-defined]
        assert len(timers) == 1  # one timer for the whole list
        assert len(watchlist) == 3
        # Outcomes and order, and lower bounds only: a loaded machine oversleeps.
        await asyncio.wait_for(both.wait(), 10)
        assert started == ["first", "second"]
        assert first.started_at is not None and first.started_at >= first_at + 0.05
        assert second.started_at is not None and second.started_at >= second_at + 0.05
        assert len(watchlist) == 0
        await asyncio.sleep(0.12)  # two more delays: the timer stopped with the list empty
        assert not [handle for handle in loop._scheduled if not handle.cancelled()]  # type: ignore[attr-defined]

    asyncio.run(main())


class _CountingServer:
    """A server whose receive() counts its callers: a pump is one more."""

    def __init__(self) -> None:
        self.receives = 0
        self.gone = asyncio.Event()
        self.first: Message = {"type": "http.request", "body": b"", "more_body": False}
        self.last: Message = {"type": "http.disconnect"}  # once gone is set

    async def receive(self) -> Message:
        self.receives += 1
        if self.receives == 1:
            return self.first
        await self.gone.wait()
        return self.last

    async def send(self, message: Message) -> None:
        pass


def test_a_handler_done_within_the_watch_delay_never_starts_a_watcher() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async with current_token().scope():  # observes the token
            await asyncio.sleep(0)
        await send(START)
        await send(BODY)

    async def main() -> int:
        server = _CountingServer()
        middleware = RequestAbortedMiddleware(app, watch_delay=0.05)
        scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        await middleware(scope, server.receive, server.send)
        await asyncio.sleep(0.1)  # past the delay: the request is over, so still no watcher
        return server.receives

    assert asyncio.run(main()) == 0


def test_a_websocket_that_looks_at_its_token_starts_no_watcher() -> None:
    """A WebSocket app reads its messages itself: the client's leaving reaches the token through
    that read, so a look at the token starts no pump (which would read ahead of the app)."""
    reads_while_the_app_slept: list[int] = []
    server = _CountingServer()
    server.first = {"type": "websocket.connect"}
    server.last = {"type": "websocket.disconnect", "code": 1000}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        assert not current_token().is_cancellation_requested  # a look
        await asyncio.sleep(0.1)  # ten watch_delays: a pump would be reading by now
        reads_while_the_app_slept.append(server.receives)
        server.gone.set()
        assert (await receive())["type"] == "websocket.disconnect"

    async def main() -> None:
        middleware = RequestAbortedMiddleware(app, watch_delay=0.01)
        scope: Scope = {"type": "websocket", "path": "/", "headers": []}
        await middleware(scope, server.receive, server.send)

    asyncio.run(main())
    assert reads_while_the_app_slept == [1]


def test_a_handler_still_running_after_the_watch_delay_hears_of_the_disconnect() -> None:
    seen: list[float] = []

    async def main() -> None:
        server = _CountingServer()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            token = current_token()
            loop = asyncio.get_running_loop()
            loop.call_later(0.01, server.gone.set)  # the client leaves, inside the delay
            started = loop.time()
            with pytest.raises(OperationCancelled):
                async with token.scope():
                    await asyncio.sleep(5)
            seen.append(loop.time() - started)

        middleware = RequestAbortedMiddleware(app, watch_delay=0.05)
        scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        await middleware(scope, server.receive, server.send)

    asyncio.run(main())
    # noticed once the delay was up (50 ms after the first look), not at the disconnect (10 ms)
    assert len(seen) == 1 and 0.04 <= seen[0] < 1.0


@pytest.mark.parametrize("watch_delay", [-0.001, 1.5, float("nan")])
def test_a_watch_delay_outside_zero_to_one_second_is_refused(watch_delay: float) -> None:
    # The watchlist keeps every request that looked within the last watch_delay, finished or not,
    # and a disconnect inside it is noticed only when it ends: a long delay defeats both.
    with pytest.raises(ValueError, match="watch_delay must be between 0 and 1 seconds"):
        RequestAbortedMiddleware(PlainTextResponse("ok"), watch_delay=watch_delay)


def test_the_watch_delay_bounds_are_accepted() -> None:
    assert RequestAbortedMiddleware(PlainTextResponse("ok"), watch_delay=0).watch_delay == 0
    assert RequestAbortedMiddleware(PlainTextResponse("ok"), watch_delay=1).watch_delay == 1
