"""``token.scope()`` on the current request's token: the request holds the scope.

A request's source knows its loop and that loop's thread, so a scope of the current request's
token entered there, with no other scope of that token active, is held by the source directly
rather than registered under its lock (and critical sections find it through the current
request). These specify that the held scope behaves as a registered one: interrupted from any
thread, refused when the token already fired, shielded by critical sections, counted, released;
and that it is taken only where it can be found again. The general path has its own
specifications in ``test_scope.py``.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from request_aborted import (
    CancellationTokenSource,
    ClientDisconnected,
    OperationCancelled,
    _current,
)

FOREVER = 3600


class LoopBoundSource(CancellationTokenSource):
    """A source bound to the running loop and its thread and published as the current request
    (in the running task's context), as the middleware's requests are."""

    def __init__(self, lock: threading.Lock | None = None, *, current: bool = True) -> None:
        lock = threading.Lock() if lock is None else lock
        self._init_source(lock, asyncio.get_running_loop(), threading.get_ident())
        if current:
            _current.current.set(self)  # type: ignore[arg-type]  # a source, not a whole request


class CountingLock:
    """A lock that counts how often it was taken: the registered path takes it, the held not."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.taken = 0

    def __enter__(self) -> bool:
        self.taken += 1
        return self.lock.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self.lock.__exit__(*exc_info)


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


def test_a_scope_of_the_current_requests_token_takes_no_lock() -> None:
    async def main() -> int:
        lock = CountingLock()
        source = LoopBoundSource(lock)  # type: ignore[arg-type]
        async with source.token.scope():
            await asyncio.sleep(0)
        return lock.taken

    assert asyncio.run(main()) == 0


def test_a_scope_of_a_token_that_is_not_the_current_requests_is_registered() -> None:
    # Held, a critical section of another token in this task would not find it: it must join
    # the chain of scopes (registered under the lock) instead.
    async def main() -> tuple[int, int]:
        lock = CountingLock()
        source = LoopBoundSource(lock, current=False)  # type: ignore[arg-type]
        async with source.token.scope():
            inside = source.registrations
            await asyncio.sleep(0)
        return lock.taken, inside

    taken, inside = asyncio.run(main())
    assert taken >= 2  # registered and removed
    assert inside == 1


def test_held_scope_is_held_off_by_a_critical_section_of_another_token() -> None:
    async def main() -> list[str]:
        steps = []
        source = LoopBoundSource()
        other = CancellationTokenSource()  # e.g. a linked source a repository made
        with pytest.raises(OperationCancelled):
            async with source.token.scope():
                async with other.token.critical_section():
                    asyncio.get_running_loop().call_soon(source.cancel)
                    await asyncio.sleep(0.02)
                    steps.append("committed")
                steps.append("section over")
                await asyncio.sleep(FOREVER)
        return steps

    assert asyncio.run(main()) == ["committed", "section over"]


def test_held_scope_in_a_task_the_handler_started_is_held_off_by_its_critical_section() -> None:
    async def main() -> list[str]:
        source = LoopBoundSource()
        steps: list[str] = []

        async def work() -> None:  # sees the request as current: its context is a copy
            try:
                async with source.token.scope():
                    async with CancellationTokenSource().token.critical_section():
                        await asyncio.sleep(0.02)
                        steps.append("committed")
                    await asyncio.sleep(FOREVER)
            except OperationCancelled:
                steps.append("interrupted after the section")

        task = asyncio.create_task(work())
        await asyncio.sleep(0)
        source.cancel()
        await task
        return steps

    assert asyncio.run(main()) == ["committed", "interrupted after the section"]
