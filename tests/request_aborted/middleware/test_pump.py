"""The pump that watches a request's connection is a hand-driven coroutine, not a task, where the
server's ``receive()`` allows it; it still hears a disconnect, and ends with the request, leaving
nothing behind. ``Driven`` (the driver) is specified here on its own too."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message

from request_aborted import ClientDisconnected, RequestAbortedMiddleware, request_aborted
from request_aborted._driven import Driven
from request_aborted._loop import running_loop
from request_aborted._watcher import TASKLESS_RECEIVES, hand_drivable
from request_aborted.testing import Exchange, Vanish


class UnknownServer(Exchange):
    """A server whose ``receive()`` lives in a module we have not read: its pump is a task."""

    async def receive(self) -> Message:
        return await super().receive()


def waiting_app(seen: dict[str, Any]) -> RequestAbortedMiddleware:
    async def endpoint(request: Request) -> Response:
        token = request_aborted(request)
        assert not token.is_cancellation_requested  # observed: watched after watch_delay
        await asyncio.sleep(0.02)  # past watch_delay: the pump is parked in the server's receive()
        seen["tasks"] = len(asyncio.all_tasks())
        async with asyncio.timeout(5):  # not wait_for: that would start a task of its own
            seen["reason"] = await token.wait()
        return PlainTextResponse("never sent")

    return RequestAbortedMiddleware(Starlette(routes=[Route("/", endpoint)]), watch_delay=0.001)


@pytest.mark.parametrize(("server", "pump_tasks"), [(Exchange, 0), (UnknownServer, 1)])
def test_a_watched_request_pumps_without_a_task_yet_a_disconnect_fires_its_token(
    server: type[Exchange], pump_tasks: int
) -> None:
    seen: dict[str, Any] = {}

    async def main() -> Exchange:
        before = len(asyncio.all_tasks())
        exchange = server(waiting_app(seen), vanish=Vanish.in_handler(0.05))
        await asyncio.create_task(exchange.run())
        assert seen["tasks"] == before + 1 + pump_tasks  # the request's task (+ a task pump)
        await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) == before
        return exchange

    exchange = asyncio.run(main())
    assert isinstance(seen["reason"], ClientDisconnected)
    assert isinstance(exchange.reason, ClientDisconnected)


def test_no_task_is_created_for_a_hand_driven_pump() -> None:
    created: list[object] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        original = loop.create_task

        def counting(coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            created.append(coro)
            return original(coro, **kwargs)

        exchange = Exchange(waiting_app({}), vanish=Vanish.in_handler(0.05))
        loop.create_task = counting  # type: ignore[method-assign]
        try:
            await exchange.run()
        finally:
            del loop.create_task
        assert exchange.reason is not None

    asyncio.run(main())
    assert created == []


def test_only_receives_that_were_read_are_driven_by_hand() -> None:
    async def main() -> None:
        loop = running_loop()
        assert hand_drivable(loop, Exchange(None).receive)  # type: ignore[arg-type]
        assert hand_drivable(loop, asyncio.Queue[Message]().get)  # hypercorn, daphne
        assert not hand_drivable(loop, UnknownServer(None).receive)  # type: ignore[arg-type]

        async def closure() -> Message:
            return {"type": "http.disconnect"}

        assert not hand_drivable(loop, closure)
        assert not hand_drivable(loop, [].pop)  # type: ignore[arg-type]  # C method, builtins

    asyncio.run(main())
    assert "request_aborted.testing" in TASKLESS_RECEIVES


# -- the driver ------------------------------------------------------------------------------


def test_the_first_step_runs_inside_start_and_stop_runs_the_cleanup_there_too() -> None:
    events: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        async def pump() -> None:
            events.append("first step")
            try:
                await future
            finally:
                events.append("cleanup")

        driven = Driven(pump(), loop)
        driven.start()
        assert events == ["first step"] and not driven.done()
        assert driven.cancel()
        assert events == ["first step", "cleanup"] and driven.done()
        assert future.cancelled()  # what it awaited is cancelled, as Task.cancel() does
        assert not driven.cancel()  # once is enough

    asyncio.run(main())


def test_stop_takes_its_callback_back_from_the_future_it_waited_on() -> None:
    class Watched(asyncio.Future[None]):
        """A future that counts the callbacks still registered on it."""

        registered = 0

        def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
            self.registered += 1
            super().add_done_callback(fn, context=context)

        def remove_done_callback(self, fn: Any) -> int:
            removed = super().remove_done_callback(fn)
            self.registered -= removed
            return removed

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future = Watched(loop=loop)

        async def pump() -> None:
            await future

        driven = Driven(pump(), loop)
        driven.start()
        assert future.registered == 1
        driven.cancel()
        assert driven.done() and future.cancelled() and future.registered == 0

    asyncio.run(main())


def test_a_pump_whose_cleanup_awaits_is_finished_from_callbacks() -> None:
    events: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        parked: asyncio.Future[None] = loop.create_future()
        goodbye: asyncio.Future[None] = loop.create_future()

        async def pump() -> None:
            try:
                await parked
            except asyncio.CancelledError:
                events.append("cancelled")
                await goodbye  # cleanup that awaits, as a cancelled task's may
                events.append("said goodbye")
                await asyncio.sleep(0)
                events.append("done")
                raise

        driven = Driven(pump(), loop)
        driven.start()
        driven.cancel()
        assert events == ["cancelled"] and not driven.done()
        loop.call_later(0.01, goodbye.set_result, None)
        for _ in range(200):
            if driven.done():
                break
            await asyncio.sleep(0.005)
        assert events == ["cancelled", "said goodbye", "done"] and driven.done()

    asyncio.run(main())


def test_a_bare_yield_steps_again_at_the_next_turn_and_a_stop_cancels_that_turn() -> None:
    steps: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def spinner() -> None:
            while True:
                steps.append(len(steps))
                await asyncio.sleep(0)

        driven = Driven(spinner(), loop)
        driven.start()
        assert steps == [0]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(steps) >= 2
        driven.cancel()
        count = len(steps)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert driven.done() and len(steps) == count

    asyncio.run(main())


def test_steps_run_in_the_context_copied_at_the_start() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        async def pump() -> None:
            seen.append(var.get())
            var.set("pump's own")
            await future
            seen.append(var.get())

        var.set("at start")
        driven = Driven(pump(), loop)
        driven.start()
        var.set("changed after")
        future.set_result(None)
        await asyncio.sleep(0)
        assert driven.done()
        assert var.get() == "changed after"  # the pump's set() stayed in its own context

    asyncio.run(main())
    assert seen == ["at start", "pump's own"]


def test_a_cancel_from_inside_its_own_step_lands_where_it_next_pauses() -> None:
    events: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        driven: Driven

        async def pump() -> None:
            driven.cancel()  # e.g. a token callback the pump's step set off ends the request
            try:
                await future
            except asyncio.CancelledError:
                events.append("cancelled")
                raise

        driven = Driven(pump(), loop)
        driven.start()
        assert future.cancelled() and not driven.done()
        await asyncio.sleep(0)
        assert driven.done()

    asyncio.run(main())
    assert events == ["cancelled"]


def test_an_error_is_reported_to_the_loop_and_a_foreign_yield_is_refused() -> None:
    reported: list[BaseException] = []

    class Foreign:
        def __await__(self) -> Any:
            yield "not a future"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: reported.append(context["exception"]))

        async def broken() -> None:
            raise ValueError("bug")

        async def foreign() -> None:
            await Foreign()

        first, second = Driven(broken(), loop), Driven(foreign(), loop)
        first.start()
        second.start()
        await asyncio.sleep(0)
        assert first.done() and second.done()

    asyncio.run(main())
    assert [type(exc) for exc in reported] == [ValueError, RuntimeError]
