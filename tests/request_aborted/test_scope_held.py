"""``token.scope()`` on a token bound to its loop (a request's): the source holds the scope.

A request's source knows its loop and that loop's thread, so a scope entered there, with no other
scope of that token active, is held by the source directly rather than registered under its lock.
These specify that the held scope behaves as a registered one: interrupted from any thread, refused
when the token already fired, shielded by critical sections, counted, released. The general path
has its own specifications in ``test_scope.py``.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from request_aborted import CancellationTokenSource, ClientDisconnected, OperationCancelled

FOREVER = 3600


class LoopBoundSource(CancellationTokenSource):
    """A source bound to the running loop and its thread, as the middleware's requests are."""

    def __init__(self) -> None:
        self._init_source(threading.Lock(), asyncio.get_running_loop(), threading.get_ident())


def cancelling() -> int:
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling()


def test_held_scope_counts_as_one_registration_while_active_and_none_after() -> None:
    async def main() -> list[int]:
        source = LoopBoundSource()
        counts = [source.registrations]
        async with source.token.scope():
            counts.append(source.registrations)
            async with source.token.scope():  # a second one goes to the table
                counts.append(source.registrations)
            counts.append(source.registrations)
        counts.append(source.registrations)
        return counts

    assert asyncio.run(main()) == [0, 1, 2, 1, 0]


def test_held_scope_is_interrupted_when_the_token_fires_from_another_thread() -> None:
    reason = ClientDisconnected()

    async def main() -> None:
        source = LoopBoundSource()
        thread = threading.Thread(target=source.cancel, args=(reason,))
        with pytest.raises(OperationCancelled) as caught:
            async with source.token.scope():
                asyncio.get_running_loop().call_later(0.01, thread.start)
                await asyncio.sleep(FOREVER)
        thread.join()
        assert caught.value.reason is reason
        assert cancelling() == 0
        assert source.registrations == 0

    asyncio.run(main())


def test_held_scope_survives_threads_racing_to_fire_as_it_is_entered_and_left() -> None:
    async def main() -> int:
        interrupted = 0
        for _ in range(200):
            source = LoopBoundSource()
            thread = threading.Thread(target=source.cancel)
            thread.start()
            try:
                async with source.token.scope():
                    await asyncio.sleep(FOREVER)
            except OperationCancelled:
                interrupted += 1
            thread.join()
            assert cancelling() == 0
            assert source.registrations == 0
        return interrupted

    assert asyncio.run(main()) == 200


def test_held_scope_raises_at_entry_when_the_token_already_fired_and_holds_nothing() -> None:
    async def main() -> None:
        source = LoopBoundSource()
        source.cancel()
        with pytest.raises(OperationCancelled):
            async with source.token.scope():
                pytest.fail("the block must not start")
        assert source.registrations == 0
        assert cancelling() == 0
        async with LoopBoundSource().token.scope():  # and the next request's scope still works
            await asyncio.sleep(0)

    asyncio.run(main())


def test_held_scope_is_held_off_by_a_critical_section_and_interrupted_after_it() -> None:
    reason = ClientDisconnected()

    async def main() -> list[str]:
        steps = []
        source = LoopBoundSource()
        with pytest.raises(OperationCancelled) as caught:
            async with source.token.scope():
                async with source.token.critical_section():
                    asyncio.get_running_loop().call_soon(source.cancel, reason)
                    await asyncio.sleep(0.02)
                    steps.append("committed")
                steps.append("section over")
                await asyncio.sleep(FOREVER)
        assert caught.value.reason is reason
        assert cancelling() == 0
        return steps

    assert asyncio.run(main()) == ["committed", "section over"]


def test_held_scope_of_one_task_does_not_hold_a_sibling_tasks_scope_back() -> None:
    async def main() -> list[str]:
        source = LoopBoundSource()
        outcomes: list[str] = []

        async def worker(name: str) -> None:
            try:
                async with source.token.scope():
                    await asyncio.sleep(FOREVER)
            except OperationCancelled:
                outcomes.append(name)

        tasks = [asyncio.create_task(worker(name)) for name in ("first", "second")]
        await asyncio.sleep(0)
        source.cancel()
        await asyncio.gather(*tasks)
        assert source.registrations == 0
        return sorted(outcomes)

    assert asyncio.run(main()) == ["first", "second"]
