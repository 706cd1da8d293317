"""``token.critical_section(grace)``: hold off the task's scopes around point-of-no-return work.

Inside the section the enclosing ``scope()`` blocks of the current task do not interrupt awaits.
The interruption comes due at the first await after the section, or, with ``grace``, at most
``grace`` seconds after the token fired, when the section's ``inner`` token fires too.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from request_aborted import (
    CancellationToken,
    CancellationTokenSource,
    ClientDisconnected,
    OperationCancelled,
    ServerShuttingDown,
)

FOREVER = 3600


def current_task() -> asyncio.Task[object]:
    task = asyncio.current_task()
    assert task is not None
    return task


def test_critical_section_without_grace_yields_the_none_token() -> None:
    async def main() -> CancellationToken:
        source = CancellationTokenSource()
        async with source.token.critical_section() as inner:
            return inner

    assert asyncio.run(main()) is CancellationToken.NONE


def test_critical_section_lets_its_awaits_finish_although_the_token_fired() -> None:
    reason = ClientDisconnected()

    async def main() -> list[str]:
        steps = []
        source = CancellationTokenSource()
        with pytest.raises(OperationCancelled) as caught:
            async with source.token.scope():
                async with source.token.critical_section():
                    asyncio.get_running_loop().call_soon(source.cancel, reason)
                    await asyncio.sleep(0.02)
                    steps.append("commit")
                    await asyncio.sleep(0)
                    steps.append("committed")
                steps.append("section over")
                await asyncio.sleep(FOREVER)  # the held-off interruption lands here
        assert caught.value.reason is reason
        assert current_task().cancelling() == 0
        assert source.registrations == 0
        return steps

    assert asyncio.run(main()) == ["commit", "committed", "section over"]


def test_critical_section_holds_off_every_enclosing_scope_of_the_task() -> None:
    outer_reason = ServerShuttingDown()

    async def main() -> list[str]:
        steps = []
        outer, inner = CancellationTokenSource(), CancellationTokenSource()
        with pytest.raises(OperationCancelled) as caught:
            async with outer.token.scope(), inner.token.scope():
                async with inner.token.critical_section():
                    asyncio.get_running_loop().call_soon(outer.cancel, outer_reason)
                    await asyncio.sleep(0.02)
                    steps.append("protected work done")
                await asyncio.sleep(FOREVER)
        assert caught.value.reason is outer_reason
        return steps

    assert asyncio.run(main()) == ["protected work done"]


def test_critical_section_with_grace_interrupts_once_the_grace_period_is_over() -> None:
    reason = ClientDisconnected()
    grace = 0.05

    async def main() -> tuple[float, CancellationToken]:
        source = CancellationTokenSource()
        loop = asyncio.get_running_loop()
        fired_at: list[float] = []

        def fire() -> None:
            fired_at.append(time.monotonic())
            source.cancel(reason)

        with pytest.raises(OperationCancelled) as caught:
            async with source.token.scope(), source.token.critical_section(grace) as inner:
                assert inner.can_be_cancelled and not inner.is_cancellation_requested
                loop.call_later(0.01, fire)
                await asyncio.sleep(FOREVER)  # work that overruns its grace period
        interrupted_after = time.monotonic() - fired_at[0]
        assert caught.value.reason is reason
        assert current_task().cancelling() == 0
        assert source.registrations == 0
        return interrupted_after, inner

    interrupted_after, inner = asyncio.run(main())
    assert grace * 0.9 <= interrupted_after < grace + 1.0
    assert inner.is_cancellation_requested
    assert inner.reason is reason


def test_critical_section_with_grace_that_finishes_in_time_is_not_interrupted_inside() -> None:
    reason = ClientDisconnected()

    async def main() -> tuple[list[str], CancellationToken]:
        steps = []
        source = CancellationTokenSource()
        with pytest.raises(OperationCancelled) as caught:
            async with source.token.scope():
                async with source.token.critical_section(FOREVER) as inner:
                    asyncio.get_running_loop().call_soon(source.cancel, reason)
                    await asyncio.sleep(0.02)
                    steps.append("finished within grace")
                await asyncio.sleep(FOREVER)
        assert caught.value.reason is reason
        return steps, inner

    steps, inner = asyncio.run(main())
    assert steps == ["finished within grace"]
    assert not inner.is_cancellation_requested


def test_critical_section_with_grace_fired_from_another_thread() -> None:
    reason = ServerShuttingDown()
    grace = 0.03

    async def main() -> CancellationToken:
        source = CancellationTokenSource()
        timer = threading.Timer(0.01, source.cancel, (reason,))
        with pytest.raises(OperationCancelled) as caught:
            async with (
                asyncio.timeout(5),
                source.token.scope(),
                source.token.critical_section(grace) as inner,
            ):
                timer.start()
                await asyncio.sleep(FOREVER)
        timer.join()
        assert caught.value.reason is reason
        return inner

    inner = asyncio.run(main())
    assert inner.reason is reason


def test_critical_section_inner_token_does_not_fire_when_the_token_never_does() -> None:
    async def main() -> CancellationToken:
        source = CancellationTokenSource()
        async with source.token.scope(), source.token.critical_section(0.01) as inner:
            await asyncio.sleep(0.03)
        assert source.registrations == 0
        return inner

    inner = asyncio.run(main())
    assert not inner.is_cancellation_requested


def test_critical_section_inner_token_stays_quiet_if_the_token_fires_as_the_section_ends() -> None:
    # The token fires from a thread whose callbacks were already taken when the section ended:
    # the grace timer must not be armed for a section that is over.
    grace = 0.02

    async def main() -> CancellationToken:
        source = CancellationTokenSource()
        blocked, release = threading.Event(), threading.Event()

        def hold_the_firing_thread(reason: BaseException) -> None:
            blocked.set()
            release.wait(5)

        source.token.register(hold_the_firing_thread)  # runs before the section's callback
        firing = threading.Thread(target=source.cancel)
        async with source.token.critical_section(grace) as inner:
            firing.start()
            await asyncio.to_thread(blocked.wait, 5)
        release.set()
        await asyncio.to_thread(firing.join)
        await asyncio.sleep(grace * 3)
        return inner

    inner = asyncio.run(main())
    assert not inner.is_cancellation_requested


def test_critical_section_outside_any_scope_still_offers_the_grace_token() -> None:
    reason = ClientDisconnected()

    async def main() -> BaseException:
        source = CancellationTokenSource()
        async with source.token.critical_section(0.01) as inner:
            source.cancel(reason)
            async with asyncio.timeout(5):
                return await inner.wait()

    assert asyncio.run(main()) is reason


def test_critical_section_does_not_hold_off_an_outer_task_cancel() -> None:
    source = CancellationTokenSource()

    async def body() -> None:
        async with source.token.scope(), source.token.critical_section():
            await asyncio.sleep(FOREVER)

    async def main() -> None:
        task = asyncio.create_task(body())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())


def test_critical_section_does_not_protect_other_tasks_while_it_runs() -> None:
    reason = ClientDisconnected()
    results: list[str] = []

    async def other_task(token: CancellationToken) -> None:
        try:
            async with token.scope():
                await asyncio.sleep(FOREVER)
        except OperationCancelled:
            results.append("other task interrupted")

    async def main() -> None:
        source = CancellationTokenSource()
        async with source.token.critical_section():
            other = asyncio.create_task(other_task(source.token))
            await asyncio.sleep(0)
            source.cancel(reason)
            await other
            results.append("section continues")

    asyncio.run(main())
    assert results == ["other task interrupted", "section continues"]


def test_critical_section_nested_keeps_protecting_until_the_outer_one_ends() -> None:
    async def main() -> list[str]:
        steps = []
        source = CancellationTokenSource()
        with pytest.raises(OperationCancelled):
            async with source.token.scope():
                async with source.token.critical_section():
                    async with source.token.critical_section():
                        source.cancel()
                        await asyncio.sleep(0.01)
                    await asyncio.sleep(0.01)  # still inside the outer section
                    steps.append("outer section done")
                await asyncio.sleep(FOREVER)
        return steps

    assert asyncio.run(main()) == ["outer section done"]


def test_critical_section_when_the_token_fired_before_it_began() -> None:
    # The block fired the token itself and went straight into a critical section: the pending
    # interruption is held off until the section is over.
    async def main() -> list[str]:
        steps = []
        source = CancellationTokenSource()
        with pytest.raises(OperationCancelled):
            async with source.token.scope():
                source.cancel()
                async with source.token.critical_section():
                    await asyncio.sleep(0.01)
                    steps.append("protected")
                await asyncio.sleep(FOREVER)
        assert current_task().cancelling() == 0
        return steps

    assert asyncio.run(main()) == ["protected"]


def test_critical_section_at_the_end_of_the_block_lets_the_block_complete() -> None:
    # As with a token fired by the block's own last statement: with no await left after the
    # section there is nothing to interrupt, and no stray cancellation is left behind.
    async def main() -> list[str]:
        steps = []
        source = CancellationTokenSource()
        async with source.token.scope() as scope, source.token.critical_section():
            source.cancel()
            await asyncio.sleep(0.01)
            steps.append("committed")
        assert not scope.cancelled_caught
        assert current_task().cancelling() == 0
        await asyncio.sleep(0.01)
        steps.append("task still running")
        return steps

    assert asyncio.run(main()) == ["committed", "task still running"]
