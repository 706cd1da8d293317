"""Sources and tokens: cancel, reasons, callbacks, timers, linking, ``wait()`` and ``NONE``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from request_aborted import (
    CancellationReason,
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


class PaymentDeclined(Exception):
    """A reason of the application's own."""


# -- a fresh source ------------------------------------------------------------------------------


def test_source_starts_uncancelled_without_deadline_or_registrations() -> None:
    source = CancellationTokenSource()
    token = source.token
    assert not source.is_cancellation_requested
    assert not token.is_cancellation_requested
    assert token.can_be_cancelled
    assert source.reason is None and token.reason is None
    assert source.deadline is None and token.deadline is None
    assert token.remaining() is None
    assert source.registrations == 0
    token.raise_if_cancellation_requested()  # does nothing


def test_token_is_a_read_only_view_of_its_source() -> None:
    token = CancellationTokenSource().token
    assert not hasattr(token, "cancel")
    assert not hasattr(token, "cancel_after")
    with pytest.raises(AttributeError):
        token.is_cancellation_requested = True  # type: ignore[misc]


# -- cancel() and reasons ------------------------------------------------------------------------


def test_cancel_without_reason_fires_with_cancellation_requested() -> None:
    source = CancellationTokenSource()
    source.cancel()
    assert source.token.is_cancellation_requested
    assert type(source.token.reason) is CancellationRequested


def test_cancel_with_a_string_wraps_it_in_cancellation_requested() -> None:
    source = CancellationTokenSource()
    source.cancel("user pressed stop")
    reason = source.token.reason
    assert isinstance(reason, CancellationRequested)
    assert str(reason) == "user pressed stop"


def test_cancel_keeps_the_exception_instance_it_was_given() -> None:
    reason = PaymentDeclined("card expired")
    source = CancellationTokenSource()
    source.cancel(reason)
    assert source.token.reason is reason
    assert source.reason is reason


def test_cancel_is_idempotent_and_the_first_reason_wins() -> None:
    first, second = ClientDisconnected(), ServerShuttingDown()
    calls: list[BaseException] = []
    source = CancellationTokenSource()
    source.token.register(calls.append)
    source.cancel(first)
    source.cancel(second)
    source.cancel()
    assert source.token.reason is first
    assert calls == [first]


def test_raise_if_cancellation_requested_raises_operation_cancelled_with_the_reason() -> None:
    reason = ClientDisconnected()
    source = CancellationTokenSource()
    source.cancel(reason)
    with pytest.raises(OperationCancelled) as caught:
        source.token.raise_if_cancellation_requested()
    assert caught.value.reason is reason
    assert "client disconnected" in str(caught.value)


def test_operation_cancelled_escapes_except_exception_and_is_not_a_cancelled_error() -> None:
    assert issubclass(OperationCancelled, BaseException)
    assert not issubclass(OperationCancelled, Exception)
    assert not issubclass(OperationCancelled, asyncio.CancelledError)
    source = CancellationTokenSource()
    source.cancel()
    with pytest.raises(OperationCancelled):
        try:
            source.token.raise_if_cancellation_requested()
        except Exception:  # must not catch it
            pytest.fail("except Exception swallowed OperationCancelled")


def test_reasons_form_the_documented_hierarchy() -> None:
    for reason in (CancellationRequested, DeadlineExceeded, ClientDisconnected, ServerShuttingDown):
        assert issubclass(reason, CancellationReason)
        assert issubclass(reason, Exception)
    assert issubclass(RequestTimedOut, DeadlineExceeded)


def test_request_timed_out_carries_its_timeout_and_policy() -> None:
    reason = RequestTimedOut(2.5, "reports")
    assert reason.timeout == 2.5
    assert reason.policy == "reports"
    assert str(reason) == "request timed out after 2.5s (policy 'reports')"
    assert str(DeadlineExceeded(0.25)) == "deadline of 0.25s exceeded"
    assert str(OperationCancelled(reason)) == (
        "operation cancelled: RequestTimedOut: request timed out after 2.5s (policy 'reports')"
    )


def test_repr_shows_state_reason_and_remaining_time() -> None:
    source = CancellationTokenSource()
    assert repr(source) == "<CancellationTokenSource [active]>"
    source.cancel_after(FOREVER)
    assert "[active] remaining=" in repr(source.token)
    source.cancel(ClientDisconnected())
    assert repr(source.token) == (
        "<CancellationToken [cancelled] reason=ClientDisconnected: client disconnected>"
    )
    assert repr(CancellationToken.NONE) == "<CancellationToken none>"


# -- register() ----------------------------------------------------------------------------------


def test_register_runs_callbacks_with_the_reason_in_registration_order() -> None:
    reason = ClientDisconnected()
    calls: list[tuple[str, BaseException]] = []
    source = CancellationTokenSource()

    def recorder(name: str) -> Callable[[BaseException], None]:
        return lambda reason: calls.append((name, reason))

    for name in ("first", "second", "third"):
        source.token.register(recorder(name))
    assert source.registrations == 3
    source.cancel(reason)
    assert calls == [("first", reason), ("second", reason), ("third", reason)]
    assert source.registrations == 0


def test_register_on_a_cancelled_token_runs_the_callback_before_returning() -> None:
    reason = ServerShuttingDown()
    calls: list[BaseException] = []
    source = CancellationTokenSource()
    source.cancel(reason)
    registration = source.token.register(calls.append)
    assert calls == [reason]
    assert source.registrations == 0
    assert registration.unregister() is False


def test_unregister_before_the_token_fires_removes_the_callback() -> None:
    calls: list[BaseException] = []
    source = CancellationTokenSource()
    registration = source.token.register(calls.append)
    assert isinstance(registration, Registration)
    assert registration.unregister() is True
    assert registration.unregister() is False  # second time: nothing left to remove
    assert source.registrations == 0
    source.cancel()
    assert calls == []


def test_unregister_after_the_callback_ran_returns_false() -> None:
    calls: list[BaseException] = []
    source = CancellationTokenSource()
    registration = source.token.register(calls.append)
    source.cancel()
    assert registration.unregister() is False
    assert len(calls) == 1


def test_registration_as_context_manager_unregisters_on_exit() -> None:
    calls: list[BaseException] = []
    source = CancellationTokenSource()
    with source.token.register(calls.append) as registration:
        assert source.registrations == 1
    assert isinstance(registration, Registration)
    assert source.registrations == 0
    source.cancel()
    assert calls == []


def test_callback_exceptions_do_not_stop_the_other_callbacks_and_are_raised_together() -> None:
    calls: list[str] = []
    source = CancellationTokenSource()

    def failing(name: str, error: BaseException) -> Callable[[BaseException], None]:
        def callback(reason: BaseException) -> None:
            calls.append(name)
            raise error

        return callback

    first_error, second_error = ValueError("first"), KeyError("second")
    source.token.register(failing("a", first_error))
    source.token.register(lambda reason: calls.append("b"))
    source.token.register(failing("c", second_error))
    source.token.register(lambda reason: calls.append("d"))

    with pytest.raises(BaseExceptionGroup) as caught:
        source.cancel()
    assert calls == ["a", "b", "c", "d"]
    assert caught.value.exceptions == (first_error, second_error)
    assert source.token.is_cancellation_requested
    source.cancel()  # already fired: no callbacks run again, nothing raised again
    assert calls == ["a", "b", "c", "d"]


def test_callback_may_unregister_another_callback_while_the_token_fires() -> None:
    calls: list[str] = []
    source = CancellationTokenSource()
    later: list[Registration] = []
    source.token.register(lambda reason: later[0].unregister())
    later.append(source.token.register(lambda reason: calls.append("later")))
    source.cancel()
    # The second callback was already taken for running: unregistering it mid-cancel is too late.
    assert calls == ["later"]


# -- threads -------------------------------------------------------------------------------------


def test_cancel_from_another_thread_runs_the_callbacks_in_that_thread() -> None:
    threads: list[int] = []
    source = CancellationTokenSource()
    source.token.register(lambda reason: threads.append(threading.get_ident()))
    worker = threading.Thread(target=source.cancel)
    worker.start()
    worker.join()
    assert threads == [worker.ident]


def test_register_and_raise_if_cancellation_requested_work_from_worker_threads() -> None:
    source = CancellationTokenSource()
    seen: list[BaseException] = []
    raised: list[BaseException] = []
    registered = threading.Barrier(9)

    def worker() -> None:
        source.token.register(seen.append)
        registered.wait()
        registered.wait()  # the main thread cancels in between
        try:
            source.token.raise_if_cancellation_requested()
        except OperationCancelled as exc:
            raised.append(exc.reason)

    workers = [threading.Thread(target=worker) for _ in range(8)]
    for thread in workers:
        thread.start()
    registered.wait()
    source.cancel(ClientDisconnected())
    registered.wait()
    for thread in workers:
        thread.join()
    reason = source.token.reason
    assert seen == [reason] * 8
    assert raised == [reason] * 8


def test_concurrent_cancels_from_many_threads_run_each_callback_once() -> None:
    for _ in range(50):
        calls: list[BaseException] = []
        source = CancellationTokenSource()
        source.token.register(calls.append)
        start = threading.Barrier(4)
        reasons = [ClientDisconnected() for _ in range(4)]

        def fire(
            reason: BaseException,
            source: CancellationTokenSource = source,
            start: threading.Barrier = start,
        ) -> None:
            start.wait()
            source.cancel(reason)

        threads = [threading.Thread(target=fire, args=(reason,)) for reason in reasons]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(calls) == 1
        assert calls[0] is source.token.reason
        assert calls[0] in reasons


# -- wait() --------------------------------------------------------------------------------------


def test_wait_returns_the_reason_when_the_token_fires() -> None:
    reason = ClientDisconnected()

    async def main() -> BaseException:
        source = CancellationTokenSource()
        asyncio.get_running_loop().call_later(0.01, source.cancel, reason)
        result = await source.token.wait()
        assert source.registrations == 0
        return result

    assert asyncio.run(main()) is reason


def test_wait_returns_at_once_when_the_token_has_already_fired() -> None:
    reason = ServerShuttingDown()

    async def main() -> BaseException:
        source = CancellationTokenSource()
        source.cancel(reason)
        return await source.token.wait()

    assert asyncio.run(main()) is reason


def test_wait_returns_when_the_token_fires_from_another_thread() -> None:
    reason = ClientDisconnected()

    async def main() -> BaseException:
        source = CancellationTokenSource()
        timer = threading.Timer(0.01, source.cancel, (reason,))
        timer.start()
        try:
            async with asyncio.timeout(5):
                return await source.token.wait()
        finally:
            timer.join()

    assert asyncio.run(main()) is reason


def test_wait_that_is_cancelled_leaves_no_registration_behind() -> None:
    async def main() -> int:
        source = CancellationTokenSource()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(source.token.wait(), 0.01)
        return source.registrations

    assert asyncio.run(main()) == 0


def test_wait_many_waiters_all_wake_with_the_same_reason() -> None:
    reason = ClientDisconnected()

    async def main() -> list[BaseException]:
        source = CancellationTokenSource()
        waiters = [asyncio.create_task(source.token.wait()) for _ in range(10)]
        await asyncio.sleep(0)
        source.cancel(reason)
        return await asyncio.gather(*waiters)

    assert asyncio.run(main()) == [reason] * 10


# -- CancellationToken.NONE ----------------------------------------------------------------------


def test_none_token_can_never_be_cancelled() -> None:
    token = CancellationToken.NONE
    assert not token.can_be_cancelled
    assert not token.is_cancellation_requested
    assert token.reason is None
    assert token.deadline is None
    assert token.remaining() is None
    token.raise_if_cancellation_requested()


def test_none_token_register_never_calls_back_and_unregister_reports_nothing_removed() -> None:
    calls: list[BaseException] = []
    registration = CancellationToken.NONE.register(calls.append)
    assert registration.unregister() is False
    with CancellationToken.NONE.register(calls.append):
        pass
    assert calls == []


def test_none_token_wait_never_returns() -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(CancellationToken.NONE.wait(), 0.02)

    asyncio.run(main())


def test_none_token_is_the_only_token_that_cannot_be_cancelled() -> None:
    assert CancellationTokenSource().token.can_be_cancelled
    cancelled = CancellationTokenSource()
    cancelled.cancel()
    assert cancelled.token.can_be_cancelled


# -- timers: timeout=, cancel_after() and deadline -----------------------------------------------


def test_cancel_after_fires_with_deadline_exceeded_on_the_event_loop() -> None:
    async def main() -> tuple[BaseException, float]:
        source = CancellationTokenSource()
        started = time.monotonic()
        source.cancel_after(0.02)
        reason = await source.token.wait()
        return reason, time.monotonic() - started

    reason, elapsed = asyncio.run(main())
    assert isinstance(reason, DeadlineExceeded)
    assert reason.timeout == 0.02
    assert elapsed >= 0.015


def test_timeout_argument_arms_the_timer_at_construction() -> None:
    async def main() -> BaseException:
        source = CancellationTokenSource(timeout=0.01)
        assert source.deadline is not None
        return await source.token.wait()

    reason = asyncio.run(main())
    assert type(reason) is DeadlineExceeded


def test_cancel_after_uses_the_given_reason() -> None:
    reason = RequestTimedOut(0.01, "default")

    async def main() -> BaseException:
        source = CancellationTokenSource()
        source.cancel_after(0.01, reason)
        return await source.token.wait()

    assert asyncio.run(main()) is reason


def test_cancel_after_resets_the_timer() -> None:
    async def main() -> bool:
        source = CancellationTokenSource()
        source.cancel_after(0.01)
        source.cancel_after(FOREVER)
        await asyncio.sleep(0.05)
        fired = source.token.is_cancellation_requested
        remaining = source.token.remaining()
        assert remaining is not None and remaining > FOREVER - 5
        source.close()
        return fired

    assert asyncio.run(main()) is False


def test_cancel_after_can_shorten_the_timer() -> None:
    async def main() -> BaseException:
        source = CancellationTokenSource(timeout=FOREVER)
        source.cancel_after(0.01)
        async with asyncio.timeout(5):
            return await source.token.wait()

    reason = asyncio.run(main())
    assert isinstance(reason, DeadlineExceeded) and reason.timeout == 0.01


def test_cancel_after_none_disarms_the_timer_and_clears_the_deadline() -> None:
    async def main() -> bool:
        source = CancellationTokenSource(timeout=0.01)
        source.cancel_after(None)
        assert source.deadline is None
        assert source.token.remaining() is None
        await asyncio.sleep(0.05)
        return source.token.is_cancellation_requested

    assert asyncio.run(main()) is False


def test_cancel_after_zero_or_less_fires_at_once() -> None:
    for seconds in (0, -1.0):
        source = CancellationTokenSource()
        source.cancel_after(seconds)
        assert isinstance(source.token.reason, DeadlineExceeded)


def test_cancel_after_on_a_cancelled_source_changes_nothing() -> None:
    reason = ClientDisconnected()
    source = CancellationTokenSource()
    source.cancel(reason)
    source.cancel_after(0)
    source.cancel_after(FOREVER)
    assert source.token.reason is reason
    assert source.deadline is None


def test_cancel_after_without_a_running_loop_fires_from_a_timer_thread() -> None:
    fired = threading.Event()
    threads: list[int] = []

    def callback(reason: BaseException) -> None:
        threads.append(threading.get_ident())
        fired.set()

    source = CancellationTokenSource()
    source.token.register(callback)
    source.cancel_after(0.01)
    assert fired.wait(5)
    assert isinstance(source.token.reason, DeadlineExceeded)
    assert threads != [threading.get_ident()]


def test_cancel_after_without_a_running_loop_can_be_reset_and_disarmed() -> None:
    source = CancellationTokenSource(timeout=0.01)
    source.cancel_after(FOREVER)
    other = CancellationTokenSource(timeout=0.01)
    other.cancel_after(None)
    time.sleep(0.05)
    assert not source.token.is_cancellation_requested
    assert not other.token.is_cancellation_requested
    source.close()


def test_close_stops_the_timer_and_keeps_the_token_state() -> None:
    async def main() -> bool:
        with CancellationTokenSource(timeout=0.01) as source:
            pass
        await asyncio.sleep(0.05)
        return source.token.is_cancellation_requested

    assert asyncio.run(main()) is False


def test_close_stops_a_timer_thread_as_well() -> None:
    # Half a second between creating and closing: a loaded machine can pause this thread for tens
    # of milliseconds, and a timer that fired before close() would prove nothing.
    source = CancellationTokenSource(timeout=0.5)
    source.close()
    time.sleep(0.7)
    assert not source.token.is_cancellation_requested


def test_close_keeps_a_cancelled_token_cancelled() -> None:
    reason = ClientDisconnected()
    with CancellationTokenSource() as source:
        source.cancel(reason)
    assert source.token.reason is reason


def test_deadline_and_remaining_follow_the_timer() -> None:
    async def main() -> None:
        before = time.monotonic()
        source = CancellationTokenSource(timeout=10)
        after = time.monotonic()
        deadline = source.token.deadline
        assert deadline is not None
        assert before + 10 <= deadline <= after + 10
        remaining = source.token.remaining()
        assert remaining is not None and 9 < remaining <= 10
        source.close()

    asyncio.run(main())


def test_remaining_is_never_negative() -> None:
    source = CancellationTokenSource()
    source.cancel_after(0)
    assert source.token.remaining() == 0.0


# -- linked sources ------------------------------------------------------------------------------


def test_linked_child_fires_with_the_parents_reason() -> None:
    reason = ClientDisconnected()
    parent = CancellationTokenSource()
    child = CancellationTokenSource.linked(parent.token)
    parent.cancel(reason)
    assert child.token.reason is reason


def test_linked_child_cancel_does_not_reach_the_parent() -> None:
    parent = CancellationTokenSource()
    child = CancellationTokenSource.linked(parent.token)
    child.cancel()
    assert child.token.is_cancellation_requested
    assert not parent.token.is_cancellation_requested
    assert parent.registrations == 0  # the fired child let go of its parent


def test_linked_child_reports_the_reason_of_the_parent_that_fired_first() -> None:
    first, second = ServerShuttingDown(), ClientDisconnected()
    a, b = CancellationTokenSource(), CancellationTokenSource()
    child = CancellationTokenSource.linked(a.token, b.token)
    b.cancel(first)
    a.cancel(second)
    assert child.token.reason is first


def test_linked_child_reports_its_own_cancel_when_it_came_first() -> None:
    own = PaymentDeclined()
    parent = CancellationTokenSource()
    child = CancellationTokenSource.linked(parent.token)
    child.cancel(own)
    parent.cancel(ClientDisconnected())
    assert child.token.reason is own


def test_linked_to_an_already_cancelled_parent_starts_cancelled() -> None:
    reason = ClientDisconnected()
    parent = CancellationTokenSource()
    parent.cancel(reason)
    child = CancellationTokenSource.linked(parent.token)
    assert child.token.reason is reason


def test_linked_to_a_live_and_a_cancelled_parent_holds_no_registration_on_the_live_one() -> None:
    reason = ClientDisconnected()
    live, cancelled = CancellationTokenSource(), CancellationTokenSource()
    cancelled.cancel(reason)
    child = CancellationTokenSource.linked(live.token, cancelled.token)
    assert child.token.reason is reason
    assert live.registrations == 0


def test_linked_with_zero_timeout_starts_cancelled_and_holds_no_registration() -> None:
    parent = CancellationTokenSource()
    child = CancellationTokenSource.linked(parent.token, timeout=0)
    assert isinstance(child.token.reason, DeadlineExceeded)
    assert parent.registrations == 0


def test_linked_to_the_none_token_only_fires_by_itself() -> None:
    child = CancellationTokenSource.linked(CancellationToken.NONE)
    assert child.token.can_be_cancelled
    assert not child.token.is_cancellation_requested
    child.cancel()
    assert child.token.is_cancellation_requested


def test_linked_timeout_fires_the_child_with_deadline_exceeded_and_not_the_parent() -> None:
    async def main() -> tuple[BaseException, bool]:
        parent = CancellationTokenSource()
        child = CancellationTokenSource.linked(parent.token, timeout=0.01)
        reason = await child.token.wait()
        return reason, parent.token.is_cancellation_requested

    reason, parent_fired = asyncio.run(main())
    assert isinstance(reason, DeadlineExceeded)
    assert not parent_fired


def test_linked_grandchild_fires_when_the_root_fires() -> None:
    reason = ServerShuttingDown()
    root = CancellationTokenSource()
    child = CancellationTokenSource.linked(root.token)
    grandchild = CancellationTokenSource.linked(child.token)
    root.cancel(reason)
    assert grandchild.token.reason is reason


def test_linked_deadline_is_the_earliest_of_its_own_and_its_parents() -> None:
    async def main() -> None:
        near = CancellationTokenSource(timeout=100)
        far = CancellationTokenSource(timeout=1000)
        without = CancellationTokenSource()
        child = CancellationTokenSource.linked(far.token, near.token, without.token, timeout=500)
        assert child.token.deadline == near.deadline
        tight = CancellationTokenSource.linked(child.token, timeout=10)
        tight_deadline = tight.token.deadline
        assert tight_deadline is not None and near.deadline is not None
        assert tight_deadline < near.deadline
        loose = CancellationTokenSource.linked(without.token)
        assert loose.token.deadline is None
        for source in (near, far, child, tight):
            source.close()

    asyncio.run(main())


def test_linked_child_close_unregisters_from_every_parent() -> None:
    a, b = CancellationTokenSource(), CancellationTokenSource()
    with CancellationTokenSource.linked(a.token, b.token) as child:
        assert a.registrations == 1
        assert b.registrations == 1
    assert a.registrations == 0
    assert b.registrations == 0
    a.cancel()
    assert not child.token.is_cancellation_requested


def test_linked_child_close_keeps_it_a_parent_for_its_own_children() -> None:
    root = CancellationTokenSource()
    middle = CancellationTokenSource.linked(root.token)
    leaf = CancellationTokenSource.linked(middle.token)
    middle.close()
    root.cancel()
    assert not middle.token.is_cancellation_requested
    middle.cancel(ClientDisconnected())
    assert isinstance(leaf.token.reason, ClientDisconnected)


def test_linked_closed_child_no_longer_reports_its_parents_deadline() -> None:
    async def main() -> None:
        parent = CancellationTokenSource(timeout=100)
        child = CancellationTokenSource.linked(parent.token)
        assert child.deadline == parent.deadline
        child.close()
        assert child.deadline is None
        parent.close()

    asyncio.run(main())
