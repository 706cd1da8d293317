"""Readiness: 200 while the lifetime runs, 503 before startup and from phase 1 on; drain_delay."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from request_aborted import ApplicationLifetime, Readiness, RequestAbortedMiddleware
from request_aborted.testing import Exchange


def app_with(probe: Readiness | None = None) -> Starlette:
    return Starlette(
        routes=[Route("/readyz", probe or Readiness())],
        middleware=[Middleware(RequestAbortedMiddleware)],
    )


async def probe(app: Starlette, state: Mapping[str, Any] | None, method: str = "GET") -> Exchange:
    """One request, with the lifespan state a server would copy into its scope."""
    exchange = Exchange(app, method=method, path="/readyz")
    if state is None:
        del exchange.scope["state"]  # a server that ran no lifespan (daphne)
    else:
        exchange.scope["state"] = dict(state)
    await exchange.run()
    return exchange


def document(exchange: Exchange) -> Any:
    return json.loads(exchange.body)


def test_ready_while_running_and_unready_from_phase_one_on() -> None:
    lifetime = ApplicationLifetime(grace=30, handle_signals=False)

    async def main() -> tuple[Exchange, Exchange, bool]:
        async with lifetime.lifespan()(None) as state:
            running = await probe(app_with(), state)
            lifetime.begin_shutdown()
            stopping = await probe(app_with(), state)
            return running, stopping, lifetime.grace_expired.is_cancellation_requested

    running, stopping, in_grace = asyncio.run(main())

    assert running.status == 200
    assert document(running) == {"status": "ready", "phase": "started"}
    assert dict(running.headers)["cache-control"] == "no-store"
    assert stopping.status == 503
    assert document(stopping) == {"status": "stopping", "phase": "stopping"}
    assert in_grace is False  # requests in flight may still finish: only new ones go elsewhere


def test_unready_before_the_lifetime_started() -> None:
    lifetime = ApplicationLifetime(handle_signals=False)

    exchange = asyncio.run(probe(app_with(Readiness(lifetime)), {}))

    assert exchange.status == 503
    assert document(exchange) == {"status": "starting", "phase": "created"}


def test_unready_with_a_clear_reason_when_no_lifetime_runs() -> None:
    exchange = asyncio.run(probe(app_with(), None))

    assert exchange.status == 503
    assert document(exchange)["status"] == "unavailable"
    assert "ApplicationLifetime.lifespan()" in document(exchange)["detail"]


def test_head_has_no_body_and_other_methods_are_refused() -> None:
    lifetime = ApplicationLifetime(handle_signals=False)

    async def main() -> tuple[Exchange, Exchange]:
        async with lifetime.lifespan()(None) as state:
            return await probe(app_with(), state, "HEAD"), await probe(app_with(), state, "POST")

    head, post = asyncio.run(main())

    assert (head.status, head.body) == (200, b"")
    assert post.status == 405
    assert dict(post.headers)["allow"] == "GET, HEAD"


@pytest.fixture
def server_handler() -> Iterator[list[float]]:
    """Stands in for the server's own SIGTERM handler; records when it was called."""
    calls: list[float] = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: calls.append(time.monotonic()))
    yield calls
    signal.signal(signal.SIGTERM, previous)


def test_drain_delay_passes_the_signal_on_only_after_the_delay(
    server_handler: list[float],
) -> None:
    lifetime = ApplicationLifetime(grace=30, drain_delay=0.3)

    async def main() -> tuple[float, list[float]]:
        async with lifetime.lifespan()(None):
            signalled_at = time.monotonic()
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.1)
            assert lifetime.stopping.is_cancellation_requested  # phase 1: readiness says 503
            seen_early = list(server_handler)
            await asyncio.sleep(0.5)
            return signalled_at, seen_early

    signalled_at, seen_early = asyncio.run(main())

    assert seen_early == []
    assert len(server_handler) == 1
    assert server_handler[0] - signalled_at >= 0.29  # timers may fire a tick early


def test_drain_delay_adds_to_the_grace_period() -> None:
    lifetime = ApplicationLifetime(grace=0.2, drain_delay=0.3, handle_signals=False)

    async def main() -> float:
        async with lifetime.lifespan()(None):
            began = time.monotonic()
            lifetime.begin_shutdown()
            await asyncio.wait_for(lifetime.grace_expired.wait(), 5)
            return time.monotonic() - began

    assert asyncio.run(main()) >= 0.49  # timers may fire a tick early


def test_a_second_signal_during_the_drain_delay_passes_it_on_at_once(
    server_handler: list[float],
) -> None:
    lifetime = ApplicationLifetime(grace=30, drain_delay=30)

    async def main() -> tuple[int, bool]:
        async with lifetime.lifespan()(None):
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.05)
            return len(server_handler), lifetime.grace_expired.is_cancellation_requested

    assert asyncio.run(main()) == (1, True)
