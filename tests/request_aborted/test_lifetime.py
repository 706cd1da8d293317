"""The application lifetime's state machine, driven in-process through its lifespan."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from request_aborted import (
    ApplicationLifetime,
    BackgroundService,
    CancellationToken,
    OperationCancelled,
    ServerShuttingDown,
)


class Recorder(BackgroundService):
    def __init__(self) -> None:
        self.events: list[str] = []

    async def execute(self, stopping_token: CancellationToken) -> None:
        self.events.append("started")
        try:
            async with stopping_token.scope():
                await asyncio.sleep(60)
        except OperationCancelled as cancelled:
            self.events.append(f"stopped: {type(cancelled.reason).__name__}")


class Failing(BackgroundService):
    async def execute(self, stopping_token: CancellationToken) -> None:
        raise ValueError("broken service")


@pytest.fixture
def signals_seen() -> Iterator[list[int]]:
    """Stand in for the server's own handler, so chaining can be observed (and nothing dies)."""
    seen: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, f: seen.append(s)) for sig in (signal.SIGTERM,)}
    yield seen
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_tokens_fire_in_order_through_the_lifespan() -> None:
    lifetime = ApplicationLifetime(grace=5, handle_signals=False)
    order: list[str] = []
    lifetime.started.register(lambda _: order.append("started"))
    lifetime.stopping.register(lambda _: order.append("stopping"))
    lifetime.grace_expired.register(lambda _: order.append("grace expired"))
    lifetime.stopped.register(lambda _: order.append("stopped"))

    async def main() -> None:
        async with lifetime.lifespan()(None):
            order.append("serving")

    asyncio.run(main())

    assert order == ["started", "serving", "stopping", "grace expired", "stopped"]
    assert isinstance(lifetime.stopping.reason, ServerShuttingDown)


def test_lifespan_state_carries_the_lifetime_and_the_inner_state() -> None:
    lifetime = ApplicationLifetime(handle_signals=False)
    disposed: list[bool] = []

    @asynccontextmanager
    async def inner(app: Any) -> AsyncIterator[dict[str, str]]:
        yield {"engine": "the engine"}
        disposed.append(lifetime.stopped.is_cancellation_requested)

    async def main() -> dict[str, Any]:
        async with lifetime.lifespan(inner)(None) as state:
            return dict(state)

    state = asyncio.run(main())

    assert state == {"engine": "the engine", "request_aborted.lifetime": lifetime}
    assert disposed == [False]  # the app's own resources go before ``stopped`` fires


def test_signal_starts_phase_one_at_once_and_chains_to_the_server_handler(
    signals_seen: list[int],
) -> None:
    lifetime = ApplicationLifetime(grace=30)
    service = Recorder()
    lifetime.add_service(service)

    async def main() -> tuple[bool, bool]:
        async with lifetime.lifespan()(None):
            await asyncio.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.05)
            return lifetime.stopping.is_cancellation_requested, (
                lifetime.grace_expired.is_cancellation_requested
            )

    stopping, grace_expired = asyncio.run(main())

    assert (stopping, grace_expired) == (True, False)
    assert signals_seen == [signal.SIGTERM]
    assert service.events == ["started", "stopped: ServerShuttingDown"]
    assert signal.getsignal(signal.SIGTERM) is not lifetime._on_signal  # restored afterwards


def test_second_signal_expires_the_grace_period_at_once() -> None:
    lifetime = ApplicationLifetime(grace=30, handle_signals=False)

    async def main() -> list[bool]:
        async with lifetime.lifespan()(None):
            lifetime.begin_shutdown()
            first = lifetime.grace_expired.is_cancellation_requested
            lifetime.begin_shutdown()
            return [first, lifetime.grace_expired.is_cancellation_requested]

    assert asyncio.run(main()) == [False, True]


def test_grace_period_expires_by_itself() -> None:
    lifetime = ApplicationLifetime(grace=0.05, handle_signals=False)

    async def main() -> BaseException:
        async with lifetime.lifespan()(None):
            lifetime.begin_shutdown()
            return await asyncio.wait_for(lifetime.grace_expired.wait(), 2)

    assert isinstance(asyncio.run(main()), ServerShuttingDown)


def test_signal_during_startup_starts_no_service_and_never_fires_started() -> None:
    lifetime = ApplicationLifetime(handle_signals=False)
    service = Recorder()
    lifetime.add_service(service)

    @asynccontextmanager
    async def slow_startup(app: Any) -> AsyncIterator[None]:
        lifetime.begin_shutdown()  # the signal lands while the app is still starting
        yield

    async def main() -> None:
        async with lifetime.lifespan(slow_startup)(None):
            await asyncio.sleep(0.01)

    asyncio.run(main())

    assert service.events == []
    assert not lifetime.started.is_cancellation_requested
    assert lifetime.stopped.is_cancellation_requested


def test_shutdown_with_nothing_in_flight_does_not_wait_for_the_grace_period() -> None:
    lifetime = ApplicationLifetime(grace=60, handle_signals=False)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        async with lifetime.lifespan()(None):
            lifetime.begin_shutdown()
            began = loop.time()
        return loop.time() - began

    assert asyncio.run(main()) < 1


def test_failing_service_is_logged_with_traceback_and_stops_the_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lifetime = ApplicationLifetime(handle_signals=False)
    lifetime.add_service(Failing())

    async def main() -> bool:
        async with lifetime.lifespan()(None):
            await asyncio.sleep(0.05)
            return lifetime.stopping.is_cancellation_requested

    assert asyncio.run(main()) is True
    failure = next(r for r in caplog.records if r.getMessage().endswith("Failing failed"))
    assert failure.exc_info is not None and failure.exc_info[0] is ValueError


def test_failing_service_may_opt_out_of_stopping_the_host() -> None:
    class Tolerated(Failing):
        stop_host_on_error = False

    lifetime = ApplicationLifetime(handle_signals=False)
    lifetime.add_service(Tolerated())

    async def main() -> bool:
        async with lifetime.lifespan()(None):
            await asyncio.sleep(0.05)
            return lifetime.stopping.is_cancellation_requested

    assert asyncio.run(main()) is False


def test_services_cannot_be_added_once_running() -> None:
    lifetime = ApplicationLifetime(handle_signals=False)

    async def main() -> None:
        async with lifetime.lifespan()(None):
            lifetime.add_service(Recorder())

    with pytest.raises(RuntimeError, match="before the application starts"):
        asyncio.run(main())
