"""``TrioLoop``: the few asyncio-loop methods the library uses, for one trio run.

Its timers and soon-callbacks run from one heap in one system task, its tasks are system tasks in
their own cancel scopes, and nothing it runs may crash the run (trio turns a system task's
exception into ``TrioInternalError``).
"""

from __future__ import annotations

import logging
import threading

import pytest
import trio

from request_aborted._loop import running_loop, running_loop_or_none
from request_aborted._trio import TrioLoop, current_loop


def test_one_loop_per_run_found_by_running_loop() -> None:
    async def main() -> tuple[object, object, object]:
        return current_loop(), running_loop(), running_loop_or_none()

    first = trio.run(main)
    second = trio.run(main)
    assert first[0] is first[1] is first[2]
    assert isinstance(first[0], TrioLoop)
    assert second[0] is not first[0]
    assert not first[0].is_running()  # its run is over
    assert current_loop() is None  # outside any run


def test_callbacks_run_soon_ones_first_then_timers_by_due_time() -> None:
    order: list[str] = []

    async def main() -> None:
        loop = current_loop()
        assert loop is not None
        loop.call_later(0.03, order.append, "later")
        loop.call_later(0.01, order.append, "sooner")
        loop.call_soon(order.append, "soon 1")
        loop.call_soon(order.append, "soon 2")
        loop.call_at(loop.time() + 0.02, order.append, "at")
        await trio.sleep(0.1)

    trio.run(main)
    assert order == ["soon 1", "soon 2", "sooner", "at", "later"]


def test_a_cancelled_timer_never_runs_and_cancelled_timers_do_not_pile_up() -> None:
    ran: list[int] = []

    async def main() -> int:
        loop = current_loop()
        assert loop is not None
        for n in range(2000):
            loop.call_later(60, ran.append, n).cancel()
        loop.call_later(0.01, ran.append, -1)
        await trio.sleep(0.05)
        return len(loop._heap)

    left = trio.run(main)
    assert ran == [-1]
    assert left < 600  # rebuilt without the cancelled ones, as asyncio's loop does


def test_a_callback_that_raises_is_logged_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise ValueError("broken callback")

    async def main() -> None:
        loop = current_loop()
        assert loop is not None
        loop.call_soon(broken)
        loop.call_soon_threadsafe(broken)
        loop.call_later(0.01, ran.append, "after")
        await trio.sleep(0.05)

    with caplog.at_level(logging.ERROR, "request_aborted"):
        trio.run(main)
    assert ran == ["after"]
    assert [r.exc_info[1].args for r in caplog.records if r.exc_info and r.exc_info[1]] == [
        ("broken callback",),
        ("broken callback",),
    ]


def test_call_soon_threadsafe_reaches_the_run_from_a_thread_and_refuses_once_it_ended() -> None:
    threads: list[int] = []

    async def main() -> TrioLoop:
        loop = current_loop()
        assert loop is not None
        arrived = trio.Event()

        def from_thread() -> None:
            loop.call_soon_threadsafe(
                lambda: (threads.append(threading.get_ident()), arrived.set())
            )

        worker = threading.Thread(target=from_thread)
        worker.start()
        with trio.fail_after(10):
            await arrived.wait()
        worker.join()
        return loop

    loop = trio.run(main)
    assert threads == [threading.get_ident()]  # ran in the run's thread
    with pytest.raises(RuntimeError):  # trio.RunFinishedError is one
        loop.call_soon_threadsafe(print)


def test_a_task_is_cancelled_by_cancel_and_one_that_raises_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    steps: list[str] = []

    async def forever() -> None:
        try:
            await trio.sleep_forever()
        finally:
            steps.append("cancelled")

    async def broken() -> None:
        raise ValueError("broken task")

    async def main() -> None:
        loop = current_loop()
        assert loop is not None
        task = loop.create_task(forever(), name="forever")
        failing = loop.create_task(broken(), name="broken")
        await trio.sleep(0.01)
        assert not task.done()
        assert task.cancel()
        assert await task.wait(10)
        assert await failing.wait(10)
        assert not task.cancel()  # over: nothing to cancel

    with caplog.at_level(logging.ERROR, "request_aborted"):
        trio.run(main)
    assert steps == ["cancelled"]
    assert any("task broken failed" in r.getMessage() for r in caplog.records)


def test_a_future_is_awaited_once_set() -> None:
    async def main() -> str:
        loop = current_loop()
        assert loop is not None
        future = loop.create_future()
        loop.call_later(0.01, future.set_result, "value")
        with trio.fail_after(10):
            value: str = await future
        assert future.done()
        with pytest.raises(RuntimeError):
            future.set_result("again")
        return value

    assert trio.run(main) == "value"
