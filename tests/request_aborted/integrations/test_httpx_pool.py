"""The connection pool survives hundreds of cancellations (encode/httpcore #830, #1093).

httpcore 1.0.x strands a pool slot when a request is cancelled after the pool assigned it a new
connection but before that connection started connecting, and a native ``task.cancel()`` strands
more by piercing the shields around response cleanup. With ``max_connections=2`` a few hundred
unlucky cancellations leave nothing but ``PoolTimeout``. The storm tests fire 500 cancellations
at requests that are connecting (the previous connection was aborted, so every request opens a new
one) and at requests waiting for their response, then ask for 100 more requests. The one-slot
tests replay the leak deterministically: a single cancellation at the wrong moment. httpcore2
(under httpx2) no longer strands that slot, but the transport's guarantee is the same with either:
every test runs with httpx and httpx2.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

from request_aborted import CancellationTokenSource, OperationCancelled
from request_aborted.httpx import TOKEN_EXTENSION, cancellable_client

from ._slow_server import SlowServer
from ._support import run

CANCELLATIONS = 500

Cancel = Callable[["asyncio.Task[Any]", CancellationTokenSource], None]


async def storm(client: Any, server: SlowServer, cancel: Cancel, seed: int) -> Counter[str]:
    """Cancel ``CANCELLATIONS`` requests, half while connecting, half while awaiting a response."""
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    loop = asyncio.get_running_loop()

    async def one(phase: str) -> None:
        source = CancellationTokenSource()
        path = "/fast" if phase == "connect" else "/wait?seconds=5"
        task = asyncio.create_task(
            client.get(server.url + path, extensions={TOKEN_EXTENSION: source.token})
        )
        delay = rng.uniform(0, 0.003) if phase == "connect" else rng.uniform(0.003, 0.012)
        loop.call_later(delay, cancel, task, source)
        try:
            await task
            outcomes[f"{phase}: completed"] += 1
        except (OperationCancelled, asyncio.CancelledError):
            outcomes[f"{phase}: cancelled"] += 1

    for _ in range(CANCELLATIONS // 2):
        await asyncio.gather(one("connect"), one("read"))
    return outcomes


async def serves_a_hundred(client: Any, server: SlowServer) -> Counter[str]:
    results: Counter[str] = Counter()

    async def get() -> None:
        try:
            response = await client.get(server.url + "/fast")
            results[str(response.status_code)] += 1
        except Exception as exc:  # httpx's or httpx2's HTTPError
            results[type(exc).__name__] += 1

    for _ in range(10):
        await asyncio.gather(*(get() for _ in range(10)))
    return results


def fire_token(task: asyncio.Task[Any], source: CancellationTokenSource) -> None:
    source.cancel()


def cancel_task(task: asyncio.Task[Any], source: CancellationTokenSource) -> None:
    task.cancel()


def check(
    make_client: Callable[[], Any],
    server: SlowServer,
    cancel: Cancel,
    seed: int,
) -> tuple[Counter[str], Counter[str]]:
    async def main() -> tuple[Counter[str], Counter[str]]:
        async with make_client() as client:
            outcomes = await storm(client, server, cancel, seed)
            return outcomes, await serves_a_hundred(client, server)

    return run(main())


def guarded_client(hx: ModuleType) -> Callable[[], Any]:
    limits = hx.Limits(max_connections=2, max_keepalive_connections=2)
    return lambda: cancellable_client(limits=limits, timeout=hx.Timeout(10.0, pool=2.0))


def test_pool_survives_500_token_cancellations_while_connecting_and_reading(
    slow_server: SlowServer, hx: ModuleType
) -> None:
    outcomes, after = check(guarded_client(hx), slow_server, fire_token, seed=830)
    assert outcomes["connect: cancelled"] > 50, outcomes
    assert outcomes["read: cancelled"] == CANCELLATIONS // 2, outcomes
    assert after == Counter({"200": 100})


def test_pool_survives_500_native_task_cancels_while_connecting_and_reading(
    slow_server: SlowServer, hx: ModuleType
) -> None:
    """docs/hazards.md 13: a raw ``task.cancel()`` of the caller must not leak into httpcore."""
    outcomes, after = check(guarded_client(hx), slow_server, cancel_task, seed=1093)
    assert outcomes["connect: cancelled"] > 50, outcomes
    assert outcomes["read: cancelled"] == CANCELLATIONS // 2, outcomes
    assert after == Counter({"200": 100})


async def cancel_while_assigned(client: Any, server: SlowServer, how: str) -> str:
    """Cancel a queued request right after the pool gave it a connection that is not open yet.

    With one slot: A's response says ``connection: close``, so when A finishes the pool opens a
    *new* connection for the queued B and wakes it. A cancels B before B's task runs again, so the
    cancellation lands between "assigned" and "connecting": httpcore's leak. Then C asks.
    """
    source = CancellationTokenSource()
    queued: list[asyncio.Task[Any]] = []

    async def first() -> None:
        await client.get(server.url + "/close?seconds=0.2")
        # No await between A's end and the cancellation: B has not run since it was assigned.
        if how == "token":
            source.cancel()
        else:
            queued[0].cancel()

    holder = asyncio.create_task(first())
    await asyncio.sleep(0.05)  # A holds the only connection
    queued.append(
        asyncio.create_task(
            client.get(server.url + "/fast", extensions={TOKEN_EXTENSION: source.token})
        )
    )
    await holder
    await asyncio.gather(*queued, return_exceptions=True)
    try:
        response = await client.get(server.url + "/fast")
    except Exception as exc:  # httpx's or httpx2's PoolTimeout
        if type(exc).__name__ != "PoolTimeout":
            raise
        return "PoolTimeout"
    return str(response.status_code)


def one_slot_client(hx: ModuleType, plain: bool) -> Any:
    limits = hx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = hx.Timeout(5.0, pool=0.5)
    if plain:
        return hx.AsyncClient(limits=limits, timeout=timeout)
    return cancellable_client(limits=limits, timeout=timeout)


PLAIN_CLIENT_AFTER_THE_CANCEL = {
    "httpx": "PoolTimeout",  # httpcore 1.0.x: the slot is gone
    "httpx2": "200",  # httpcore2 drops a NEW connection whose request was cancelled
}


def test_plain_client_after_one_cancellation_at_the_wrong_moment(
    slow_server: SlowServer, hx: ModuleType
) -> None:
    """The bug the transport works around, as each package stands: httpx loses its only slot,
    httpx2 (httpcore2) no longer does. When the httpx case fails, httpcore fixed #830/#1093."""

    async def main() -> str:
        async with one_slot_client(hx, plain=True) as client:
            return await cancel_while_assigned(client, slow_server, "task.cancel")

    assert run(main()) == PLAIN_CLIENT_AFTER_THE_CANCEL[hx.__name__]


def test_cancellable_client_keeps_its_slot_through_the_same_cancellation(
    slow_server: SlowServer, hx: ModuleType
) -> None:
    """Through the transport, B's httpcore work runs in a step task B's caller never cancels."""

    async def main() -> list[str]:
        async with one_slot_client(hx, plain=False) as client:
            return [
                await cancel_while_assigned(client, slow_server, how)
                for how in ("task.cancel", "token", "task.cancel", "token")
            ]

    assert run(main()) == ["200"] * 4
