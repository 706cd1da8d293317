"""``token.scope()``: interrupt the block when the token fires, and nobody else's cancellation.

Each test runs its own event loop with ``asyncio.run``. Cancellations are triggered from loop
callbacks (``call_soon``/``call_later``) rather than by sleeping for a guessed time, so the order
of events is fixed and the tests do not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest

from request_aborted import (
    CancellationRequested,
    CancellationToken,
    CancellationTokenSource,
    ClientDisconnected,
    DeadlineExceeded,
    OperationCancelled,
    Registration,
    RequestTimedOut,
    ServerShuttingDown,
)

FOREVER = 3600


def current_task() -> asyncio.Task[object]:
    task = asyncio.current_task()
    assert task is not None
    return task


def test_scope_lets_the_block_finish_when_the_token_does_not_fire() -> None:
    async def main() -> list[str]:
        source = CancellationTokenSource()
        steps = []
        async with source.token.scope() as scope:
            await asyncio.sleep(0)
            steps.append("done")
        assert not scope.cancelled_caught
        assert source.registrations == 0
        return steps

    assert asyncio.run(main()) == ["done"]


def test_scope_interrupts_the_block_at_its_await_and_raises_operation_cancelled() -> None:
    reason = ClientDisconnected()
    steps: list[str] = []

    async def main() -> None:
        source = CancellationTokenSource()
        asyncio.get_running_loop().call_later(0.01, source.cancel, reason)
        scope = source.token.scope()
        with pytest.raises(OperationCancelled) as caught:
            async with scope:
                steps.append("before")
                await asyncio.sleep(FOREVER)
                steps.append("after")  # never reached
        assert caught.value.reason is reason
        assert scope.cancelled_caught
        assert source.registrations == 0

    asyncio.run(main())
    assert steps == ["before"]


def test_scope_raises_at_entry_when_the_token_has_already_fired() -> None:
    reason = ServerShuttingDown()
    entered = False

    async def main() -> None:
        nonlocal entered
        source = CancellationTokenSource()
        source.cancel(reason)
        with pytest.raises(OperationCancelled) as caught:
            async with source.token.scope():
                entered = True
        assert caught.value.reason is reason
        assert source.registrations == 0
        # Nothing was left pending for the task: it keeps running normally.
        assert current_task().cancelling() == 0
        await asyncio.sleep(0)

    asyncio.run(main())
    assert not entered


def test_scope_cancellation_is_not_swallowed_by_except_exception() -> None:
    async def main() -> str:
        source = CancellationTokenSource()
        asyncio.get_running_loop().call_soon(source.cancel)
        try:
            async with source.token.scope():
                try:
                    await asyncio.sleep(FOREVER)
                except Exception:  # the kind of handler application code is full of
                    return "swallowed"
        except OperationCancelled as exc:
            assert isinstance(exc.reason, CancellationRequested)
            return "propagated"
        return "finished"

    assert asyncio.run(main()) == "propagated"


def test_scope_passes_exceptions_from_the_block_through_unchanged() -> None:
    async def main() -> None:
        source = CancellationTokenSource()
        with pytest.raises(KeyError):
            async with source.token.scope():
                await asyncio.sleep(0)
                raise KeyError("boom")
        assert source.registrations == 0

    asyncio.run(main())


def test_scope_leaves_task_cancelling_count_as_it_found_it_after_converting() -> None:
    async def main() -> None:
        task = current_task()
        source = CancellationTokenSource()
        asyncio.get_running_loop().call_soon(source.cancel)
        assert task.cancelling() == 0
        with pytest.raises(OperationCancelled):
            async with source.token.scope():
                await asyncio.sleep(FOREVER)
        assert task.cancelling() == 0
        # And the task is not left with a cancellation to trip over later.
        await asyncio.sleep(0.01)

    asyncio.run(main())


def test_scope_restores_a_cancelling_count_that_was_already_raised_on_entry() -> None:
    # The task had a cancellation request that was caught and never uncancelled: the scope must
    # still recognise its own cancellation and put the count back to 1, not to 0.
    async def main() -> None:
        task = current_task()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.sleep(0)
        assert task.cancelling() == 1
        source = CancellationTokenSource()
        asyncio.get_running_loop().call_soon(source.cancel)
        with pytest.raises(OperationCancelled):
            async with source.token.scope():
                await asyncio.sleep(FOREVER)
        assert task.cancelling() == 1
        task.uncancel()

    asyncio.run(main())


def test_scope_reports_the_timer_of_the_source_as_deadline_exceeded() -> None:
    async def main() -> BaseException:
        with pytest.raises(OperationCancelled) as caught:
            async with CancellationTokenSource(timeout=0.01).token.scope():
                await asyncio.sleep(FOREVER)
        return caught.value.reason

    reason = asyncio.run(main())
    assert isinstance(reason, DeadlineExceeded) and reason.timeout == 0.01


def test_scope_of_a_linked_token_reports_the_parents_reason() -> None:
    reason = ServerShuttingDown()

    async def main() -> None:
        parent = CancellationTokenSource()
        asyncio.get_running_loop().call_soon(parent.cancel, reason)
        child = CancellationTokenSource.linked(parent.token, timeout=FOREVER)
        with child, pytest.raises(OperationCancelled) as caught:
            async with child.token.scope():
                await asyncio.sleep(FOREVER)
        assert caught.value.reason is reason
        assert parent.registrations == 0

    asyncio.run(main())


def test_scope_fired_by_the_block_itself_without_a_later_await_leaves_no_stray_cancel() -> None:
    async def main() -> list[str]:
        steps = []
        source = CancellationTokenSource()
        async with source.token.scope() as scope:
            await asyncio.sleep(0)
            source.cancel(ClientDisconnected())  # no await follows inside the block
            steps.append("block finished")
        assert not scope.cancelled_caught
        assert current_task().cancelling() == 0
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        steps.append("task still running")
        return steps

    assert asyncio.run(main()) == ["block finished", "task still running"]


def test_scope_fired_by_the_block_itself_interrupts_the_next_await() -> None:
    reason = ClientDisconnected()

    async def main() -> list[str]:
        steps = []
        source = CancellationTokenSource()
        with pytest.raises(OperationCancelled) as caught:
            async with source.token.scope():
                source.cancel(reason)
                steps.append("still running after cancel()")
                await asyncio.sleep(FOREVER)
        assert caught.value.reason is reason
        return steps

    assert asyncio.run(main()) == ["still running after cancel()"]


def test_scope_interrupts_when_the_token_fires_from_another_thread() -> None:
    reason = ClientDisconnected()

    async def main() -> None:
        source = CancellationTokenSource()
        thread = threading.Thread(target=source.cancel, args=(reason,))
        with pytest.raises(OperationCancelled) as caught:
            async with source.token.scope():
                asyncio.get_running_loop().call_later(0.01, thread.start)
                await asyncio.sleep(FOREVER)
        thread.join()
        assert caught.value.reason is reason
        assert current_task().cancelling() == 0

    asyncio.run(main())


def test_scope_ignores_a_token_fired_from_another_thread_after_the_block_ended() -> None:
    async def main() -> str:
        source = CancellationTokenSource()
        async with source.token.scope():
            await asyncio.sleep(0)
        thread = threading.Thread(target=source.cancel)
        thread.start()
        await asyncio.to_thread(thread.join)
        for _ in range(5):
            await asyncio.sleep(0)
        return "not interrupted"

    assert asyncio.run(main()) == "not interrupted"


def test_scope_survives_many_threads_racing_to_fire_while_it_is_entered() -> None:
    async def main() -> int:
        interrupted = 0
        for _ in range(200):
            source = CancellationTokenSource()
            thread = threading.Thread(target=source.cancel)
            thread.start()
            try:
                async with source.token.scope():
                    await asyncio.sleep(FOREVER)
            except OperationCancelled:
                interrupted += 1
            thread.join()
            assert current_task().cancelling() == 0
            assert source.registrations == 0
        return interrupted

    assert asyncio.run(main()) == 200


class _FiresFromAThreadWhileRegistering(CancellationTokenSource):
    """A source that another thread cancels right after a callback was registered on it.

    This pins down the moment a ``scope()`` is most exposed: it is in the source's table, but
    the registration has not returned to ``__aenter__`` yet.
    """

    def __init__(self, reason: BaseException) -> None:
        super().__init__()
        self.fire_with = reason

    def _add(self, registration: Registration) -> BaseException | None:
        reason = super()._add(registration)
        thread = threading.Thread(target=self.cancel, args=(self.fire_with,))
        thread.start()
        thread.join()
        return reason


def test_scope_entered_while_another_thread_fires_the_token_still_raises() -> None:
    reason = ClientDisconnected()

    async def main() -> None:
        source = _FiresFromAThreadWhileRegistering(reason)
        with pytest.raises(OperationCancelled) as caught:
            async with asyncio.timeout(5), source.token.scope():
                await asyncio.sleep(FOREVER)
        assert caught.value.reason is reason
        assert current_task().cancelling() == 0
        await asyncio.sleep(0.01)  # and nothing is left pending for the task

    asyncio.run(main())


def test_scope_lets_an_outer_task_cancel_propagate_as_cancelled_error() -> None:
    async def body(scope_box: list[object]) -> None:
        source = CancellationTokenSource()
        async with source.token.scope() as scope:
            scope_box.append(scope)
            await asyncio.sleep(FOREVER)

    async def main() -> None:
        box: list[object] = []
        task = asyncio.create_task(body(box))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())


@pytest.mark.parametrize(
    "token_first", [True, False], ids=["token-then-cancel", "cancel-then-token"]
)
def test_scope_lets_an_outer_task_cancel_win_even_when_the_token_also_fired(
    token_first: bool,
) -> None:
    source = CancellationTokenSource()

    async def body() -> None:
        async with source.token.scope():
            await asyncio.sleep(FOREVER)

    async def main() -> None:
        task = asyncio.create_task(body())
        await asyncio.sleep(0)
        if token_first:
            source.cancel(ClientDisconnected())
            task.cancel()
        else:
            task.cancel()
            source.cancel(ClientDisconnected())
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())


def test_scope_lets_an_outer_cancel_win_after_the_token_interruption_was_delivered() -> None:
    # The token interrupted the block; while the block cleans up, the task is cancelled from
    # outside. The outer cancellation must come out, not OperationCancelled.
    source = CancellationTokenSource()
    cleaning = asyncio.Event()

    async def body() -> None:
        async with source.token.scope():
            try:
                await asyncio.sleep(FOREVER)
            finally:
                cleaning.set()
                await asyncio.sleep(0.01)  # shielded-style cleanup; cancelled from outside

    async def main() -> None:
        task = asyncio.create_task(body())
        await asyncio.sleep(0)
        source.cancel()
        await cleaning.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())


def test_scope_passes_an_inner_asyncio_timeout_through_as_timeout_error() -> None:
    async def main() -> None:
        source = CancellationTokenSource()
        with pytest.raises(TimeoutError):
            async with source.token.scope() as scope:
                async with asyncio.timeout(0.01):
                    await asyncio.sleep(FOREVER)
        assert not scope.cancelled_caught
        assert not source.is_cancellation_requested
        assert current_task().cancelling() == 0

    asyncio.run(main())


def test_scope_interrupts_through_an_inner_asyncio_timeout_that_did_not_expire() -> None:
    reason = ClientDisconnected()

    async def main() -> None:
        source = CancellationTokenSource()
        asyncio.get_running_loop().call_later(0.01, source.cancel, reason)
        with pytest.raises(OperationCancelled) as caught:
            async with source.token.scope():
                async with asyncio.timeout(FOREVER):
                    await asyncio.sleep(FOREVER)
        assert caught.value.reason is reason
        assert current_task().cancelling() == 0

    asyncio.run(main())


def test_scope_inside_an_asyncio_timeout_lets_the_timeout_expire_as_timeout_error() -> None:
    async def main() -> None:
        source = CancellationTokenSource()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                async with source.token.scope() as scope:
                    await asyncio.sleep(FOREVER)
        assert not scope.cancelled_caught
        assert current_task().cancelling() == 0

    asyncio.run(main())


def test_scope_inside_an_asyncio_timeout_raises_operation_cancelled_through_it() -> None:
    reason = RequestTimedOut(5.0, "default")

    async def main() -> None:
        source = CancellationTokenSource()
        asyncio.get_running_loop().call_later(0.01, source.cancel, reason)
        with pytest.raises(OperationCancelled) as caught:
            async with asyncio.timeout(FOREVER):
                async with source.token.scope():
                    await asyncio.sleep(FOREVER)
        assert caught.value.reason is reason
        assert current_task().cancelling() == 0

    asyncio.run(main())


@pytest.mark.parametrize("timeout_outside", [True, False], ids=["timeout-outside", "scope-outside"])
def test_scope_and_asyncio_timeout_firing_together_leave_one_error_and_a_clean_task(
    timeout_outside: bool,
) -> None:
    # Both fire in the same loop iteration. The outer of the two reports, as the outer of two
    # nested asyncio.timeout blocks does, and the task's cancellation count is back to zero.
    async def main() -> BaseException:
        source = CancellationTokenSource()
        loop = asyncio.get_running_loop()
        when = loop.time() + 0.02
        loop.call_at(when, source.cancel, ClientDisconnected())
        try:
            if timeout_outside:
                async with asyncio.timeout_at(when):
                    async with source.token.scope():
                        await asyncio.sleep(FOREVER)
            else:
                async with source.token.scope():
                    async with asyncio.timeout_at(when):
                        await asyncio.sleep(FOREVER)
        except (TimeoutError, OperationCancelled) as exc:
            assert current_task().cancelling() == 0
            await asyncio.sleep(0.01)  # no stray cancellation left behind
            return exc
        raise AssertionError("neither the timeout nor the token interrupted the block")

    error = asyncio.run(main())
    assert isinstance(error, TimeoutError if timeout_outside else OperationCancelled)


def test_scope_passes_an_inner_anyio_cancel_scope_cancellation_to_anyio() -> None:
    async def main() -> list[str]:
        steps = []
        source = CancellationTokenSource()
        async with source.token.scope() as scope:
            with anyio.move_on_after(0.01) as anyio_scope:
                await asyncio.sleep(FOREVER)
            steps.append("anyio moved on")
            await asyncio.sleep(0)
            steps.append("block continues")
        assert anyio_scope.cancelled_caught
        assert not scope.cancelled_caught
        assert current_task().cancelling() == 0
        return steps

    assert asyncio.run(main()) == ["anyio moved on", "block continues"]


def test_scope_interrupts_through_an_inner_anyio_cancel_scope() -> None:
    reason = ClientDisconnected()

    async def main() -> None:
        source = CancellationTokenSource()
        asyncio.get_running_loop().call_later(0.01, source.cancel, reason)
        with pytest.raises(OperationCancelled) as caught:
            async with source.token.scope():
                with anyio.CancelScope() as anyio_scope:
                    await asyncio.sleep(FOREVER)
        assert caught.value.reason is reason
        assert not anyio_scope.cancelled_caught
        assert current_task().cancelling() == 0

    asyncio.run(main())


def test_scope_inside_anyio_move_on_after_leaves_the_cancellation_to_anyio() -> None:
    async def main() -> None:
        source = CancellationTokenSource()
        with anyio.move_on_after(0.01) as anyio_scope:
            async with source.token.scope() as scope:
                await asyncio.sleep(FOREVER)
        assert anyio_scope.cancelled_caught
        assert not scope.cancelled_caught
        assert current_task().cancelling() == 0

    asyncio.run(main())


def test_scope_inside_anyio_fail_after_lets_it_raise_timeout_error() -> None:
    async def main() -> None:
        source = CancellationTokenSource()
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.01):
                async with source.token.scope():
                    await asyncio.sleep(FOREVER)

    asyncio.run(main())


def test_scope_inside_an_anyio_cancel_scope_raises_operation_cancelled_through_it() -> None:
    reason = ClientDisconnected()

    async def main() -> None:
        source = CancellationTokenSource()
        asyncio.get_running_loop().call_later(0.01, source.cancel, reason)
        with pytest.raises(OperationCancelled) as caught:
            with anyio.CancelScope() as anyio_scope:
                async with source.token.scope():
                    await asyncio.sleep(FOREVER)
        assert caught.value.reason is reason
        assert not anyio_scope.cancelled_caught

    asyncio.run(main())


@pytest.mark.parametrize("anyio_first", [True, False], ids=["anyio-then-token", "token-then-anyio"])
@pytest.mark.parametrize("anyio_outside", [True, False], ids=["anyio-outside", "scope-outside"])
def test_scope_and_anyio_cancel_scope_firing_together_leave_one_outcome_and_a_clean_task(
    anyio_first: bool, anyio_outside: bool
) -> None:
    # Both cancel in the same callback. The outer of the two reports; no bare CancelledError may
    # escape (nobody cancelled the task itself) and the task's cancellation count is back to zero.
    async def main() -> str:
        source = CancellationTokenSource()
        anyio_scope = anyio.CancelScope()

        def fire_both() -> None:
            if anyio_first:
                anyio_scope.cancel()
                source.cancel(ClientDisconnected())
            else:
                source.cancel(ClientDisconnected())
                anyio_scope.cancel()

        asyncio.get_running_loop().call_later(0.01, fire_both)
        try:
            if anyio_outside:
                with anyio_scope:
                    async with source.token.scope():
                        await asyncio.sleep(FOREVER)
            else:
                async with source.token.scope():
                    with anyio_scope:
                        await asyncio.sleep(FOREVER)
                    # anyio swallowed its own cancellation: the token must still interrupt.
                    await asyncio.sleep(FOREVER)
        except OperationCancelled:
            outcome = "token"
        else:
            outcome = "anyio"
        assert current_task().cancelling() == 0
        await asyncio.sleep(0.01)
        return outcome

    assert asyncio.run(main()) == ("anyio" if anyio_outside else "token")


def test_scope_nested_inner_token_fires_inner_scope_raises_and_outer_block_continues() -> None:
    inner_reason = ClientDisconnected()

    async def main() -> list[str]:
        steps = []
        outer, inner = CancellationTokenSource(), CancellationTokenSource()
        asyncio.get_running_loop().call_later(0.01, inner.cancel, inner_reason)
        async with outer.token.scope() as outer_scope:
            with pytest.raises(OperationCancelled) as caught:
                async with inner.token.scope() as inner_scope:
                    await asyncio.sleep(FOREVER)
            assert caught.value.reason is inner_reason
            await asyncio.sleep(0)
            steps.append("outer block continues")
        assert inner_scope.cancelled_caught
        assert not outer_scope.cancelled_caught
        assert current_task().cancelling() == 0
        return steps

    assert asyncio.run(main()) == ["outer block continues"]


def test_scope_nested_outer_token_fires_the_outer_scope_reports_it() -> None:
    outer_reason = ServerShuttingDown()

    async def main() -> None:
        outer, inner = CancellationTokenSource(), CancellationTokenSource()
        asyncio.get_running_loop().call_later(0.01, outer.cancel, outer_reason)
        with pytest.raises(OperationCancelled) as caught:
            async with outer.token.scope() as outer_scope, inner.token.scope() as inner_scope:
                await asyncio.sleep(FOREVER)
        assert caught.value.reason is outer_reason
        assert outer_scope.cancelled_caught
        assert not inner_scope.cancelled_caught
        assert current_task().cancelling() == 0

    asyncio.run(main())


def test_scope_nested_both_tokens_firing_together_report_the_outer_reason_once() -> None:
    outer_reason, inner_reason = ServerShuttingDown(), ClientDisconnected()

    async def main() -> BaseException:
        outer, inner = CancellationTokenSource(), CancellationTokenSource()

        def fire_both() -> None:
            inner.cancel(inner_reason)
            outer.cancel(outer_reason)

        asyncio.get_running_loop().call_later(0.01, fire_both)
        with pytest.raises(OperationCancelled) as caught:
            async with outer.token.scope(), inner.token.scope():
                await asyncio.sleep(FOREVER)
        assert current_task().cancelling() == 0
        await asyncio.sleep(0.01)
        return caught.value.reason

    assert asyncio.run(main()) is outer_reason


def test_scope_nested_on_the_same_token_raises_one_operation_cancelled() -> None:
    async def main() -> None:
        source = CancellationTokenSource()
        asyncio.get_running_loop().call_later(0.01, source.cancel)
        with pytest.raises(OperationCancelled):
            async with source.token.scope(), source.token.scope():
                await asyncio.sleep(FOREVER)
        assert current_task().cancelling() == 0
        assert source.registrations == 0

    asyncio.run(main())


def test_scope_of_the_none_token_never_interrupts() -> None:
    async def main() -> bool:
        async with CancellationToken.NONE.scope() as scope:
            await asyncio.sleep(0.01)
        return scope.cancelled_caught

    assert asyncio.run(main()) is False


def test_scope_in_a_child_task_is_interrupted_without_touching_the_parent_task() -> None:
    reason = ClientDisconnected()

    async def child(token: CancellationToken) -> str:
        try:
            async with token.scope():
                await asyncio.sleep(FOREVER)
        except OperationCancelled as exc:
            assert exc.reason is reason
            return "child interrupted"
        return "child finished"

    async def main() -> str:
        source = CancellationTokenSource()
        task = asyncio.create_task(child(source.token))
        await asyncio.sleep(0)
        source.cancel(reason)
        result = await task
        await asyncio.sleep(0.01)  # the parent itself was not cancelled
        return result

    assert asyncio.run(main()) == "child interrupted"


def test_scope_can_be_entered_only_once() -> None:
    async def main() -> None:
        scope = CancellationTokenSource().token.scope()
        async with scope:
            pass
        with pytest.raises(RuntimeError, match="only once"):
            async with scope:
                pass

    asyncio.run(main())


def test_scope_repr_shows_its_state_and_token() -> None:
    async def main() -> None:
        scope = CancellationTokenSource().token.scope()
        assert "created" in repr(scope)
        async with scope:
            assert "active" in repr(scope)
        assert "finished" in repr(scope)

    asyncio.run(main())
