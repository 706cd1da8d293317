"""A request waiting for an httpx pool slot leaves the queue when its token fires; no slot is lost.

The pool is one connection, held by a request the server answers only after 30 s, and the pool
timeout is 30 s: every wait here that ends in well under that proves the token (or its budget)
ended it, not httpx's pool timer. Times are taken in this process: from the moment the token fired
(a registration on it) to the moment the waiting call raised. The bounds only tell "the token"
from "the pool timeout" on a loaded machine; the latency itself is ``bench/bench_poolwait.py``'s.
Every test runs with httpx and httpx2 (``hx``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from request_aborted import (
    CancellationTokenSource,
    ClientDisconnected,
    DeadlineExceeded,
    OperationCancelled,
    RequestAbortedMiddleware,
    RequestTimedOut,
)
from request_aborted.httpx import TOKEN_EXTENSION, cancellable_client
from request_aborted.testing import Exchange, Vanish

from ._slow_server import SlowServer
from ._support import run

TOKEN_NOT_POOL = 2.0  # far above the 10 ms goal, far below the 30 s pool timeout


def one_slot_client(hx: ModuleType, pool_timeout: float = 30.0) -> Any:
    return cancellable_client(
        limits=hx.Limits(max_connections=1, max_keepalive_connections=1),
        timeout=hx.Timeout(60.0, pool=pool_timeout),
    )


@contextlib.asynccontextmanager
async def held(client: Any, server: SlowServer) -> AsyncIterator[None]:
    """Hold the client's only connection until the block ends, then release it cleanly.

    The holder has a token of its own, fired on the way out: the transport aborts its socket, the
    way that never strands a slot, so what the test sees afterwards is the waiter's doing.
    """
    key = uuid.uuid4().hex
    source = CancellationTokenSource()
    holder = asyncio.create_task(
        client.get(
            f"{server.url}/wait?seconds=30&key={key}", extensions={TOKEN_EXTENSION: source.token}
        )
    )
    for _ in range(1000):
        if key in server.requests:
            break
        await asyncio.sleep(0.005)
    assert key in server.requests, "the holder never reached the server"
    try:
        yield
    finally:
        source.cancel()
        with contextlib.suppress(OperationCancelled):
            await holder


@dataclass
class WaitOutcome:
    error: BaseException | None
    waited: float
    after_fire: float | None


async def wait_for_slot(
    client: Any, server: SlowServer, source: CancellationTokenSource, fire_after: float | None
) -> WaitOutcome:
    """Ask for the held pool; fire ``source`` with ``ClientDisconnected`` after ``fire_after``."""
    fired: list[float] = []
    registration = source.token.register(lambda _: fired.append(time.perf_counter()))
    loop = asyncio.get_running_loop()
    handle = None
    if fire_after is not None:
        handle = loop.call_later(fire_after, source.cancel, ClientDisconnected())
    start = time.perf_counter()
    error: BaseException | None = None
    try:
        await client.get(f"{server.url}/fast", extensions={TOKEN_EXTENSION: source.token})
    except (Exception, OperationCancelled) as exc:  # OperationCancelled is a BaseException
        error = exc
    finally:
        registration.unregister()
        if handle is not None:
            handle.cancel()
    end = time.perf_counter()
    return WaitOutcome(error, end - start, end - fired[0] if fired else None)


async def serves(client: Any, server: SlowServer) -> int:
    """The slot is back: a request gets it within a short pool timeout."""
    async with asyncio.timeout(TOKEN_NOT_POOL):
        response = await client.get(f"{server.url}/fast", timeout=1.0)
    return int(response.status_code)


def test_pool_wait_ends_when_the_token_fires_and_loses_no_slot(
    slow_server: SlowServer, hx: ModuleType
) -> None:
    async def main() -> tuple[WaitOutcome, int]:
        async with one_slot_client(hx) as client:
            async with held(client, slow_server):
                source = CancellationTokenSource()
                outcome = await wait_for_slot(client, slow_server, source, fire_after=0.2)
            return outcome, await serves(client, slow_server)

    outcome, status = run(main())
    assert isinstance(outcome.error, OperationCancelled), outcome
    assert isinstance(outcome.error.reason, ClientDisconnected)
    assert outcome.after_fire is not None and outcome.after_fire < TOKEN_NOT_POOL
    assert status == 200


def test_pool_wait_is_bounded_by_the_token_deadline(
    slow_server: SlowServer, hx: ModuleType
) -> None:
    async def main() -> tuple[WaitOutcome, int]:
        async with one_slot_client(hx) as client:
            async with held(client, slow_server):
                source = CancellationTokenSource(timeout=0.3)
                outcome = await wait_for_slot(client, slow_server, source, fire_after=None)
            return outcome, await serves(client, slow_server)

    outcome, status = run(main())
    assert isinstance(outcome.error, OperationCancelled), outcome
    assert isinstance(outcome.error.reason, DeadlineExceeded)
    assert 0.25 < outcome.waited < 0.3 + TOKEN_NOT_POOL
    assert status == 200


def test_pool_wait_refuses_at_once_when_the_token_already_fired(
    slow_server: SlowServer, hx: ModuleType
) -> None:
    async def main() -> WaitOutcome:
        async with one_slot_client(hx) as client, held(client, slow_server):
            source = CancellationTokenSource()
            source.cancel(ClientDisconnected())
            return await wait_for_slot(client, slow_server, source, fire_after=None)

    outcome = run(main())
    assert isinstance(outcome.error, OperationCancelled), outcome
    assert outcome.waited < TOKEN_NOT_POOL


def test_pool_wait_without_a_deadline_keeps_the_pool_timeout(
    slow_server: SlowServer, hx: ModuleType
) -> None:
    async def main() -> WaitOutcome:
        async with one_slot_client(hx, pool_timeout=0.2) as client, held(client, slow_server):
            return await wait_for_slot(
                client, slow_server, CancellationTokenSource(), fire_after=None
            )

    outcome = run(main())
    assert isinstance(outcome.error, hx.PoolTimeout), outcome


def test_pool_wait_loses_no_slot_when_tokens_fire_as_the_slot_comes_back(
    slow_server: SlowServer, hx: ModuleType
) -> None:
    # The waiter's token fires just before, at, or just after the moment the holder lets the
    # connection go: a slot handed to a waiter whose token fired must come back, not vanish.
    async def main() -> list[int]:
        rng = random.Random(15)
        statuses = []
        async with one_slot_client(hx) as client:
            for _ in range(20):
                source = CancellationTokenSource()
                loop = asyncio.get_running_loop()
                async with held(client, slow_server):
                    waiter = asyncio.create_task(
                        client.get(
                            f"{slow_server.url}/fast", extensions={TOKEN_EXTENSION: source.token}
                        )
                    )
                    await asyncio.sleep(0.02)  # the waiter is queued
                    loop.call_later(rng.uniform(0.0, 0.004), source.cancel)
                    await asyncio.sleep(0.002)
                await asyncio.wait({waiter}, timeout=TOKEN_NOT_POOL)
                assert waiter.done()
                error = waiter.exception()
                assert error is None or isinstance(error, OperationCancelled), error
                statuses.append(await serves(client, slow_server))
        return statuses

    assert run(main()) == [200] * 20


def handler_calling_upstream(client: Any, server: SlowServer) -> Starlette:
    """An app whose handler calls upstream through the held pool with the request's token."""

    async def search(request: Request) -> Response:
        response = await client.get(f"{server.url}/fast")  # current_token(): no extension
        return PlainTextResponse(response.text)

    return Starlette(routes=[Route("/search", search)])


def test_a_departed_client_waiting_for_a_slot_gets_the_499_line(
    slow_server: SlowServer, hx: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="request_aborted")

    async def main() -> tuple[Exchange, float]:
        async with one_slot_client(hx) as client, held(client, slow_server):
            app = RequestAbortedMiddleware(handler_calling_upstream(client, slow_server))
            exchange = Exchange(app, path="/search", vanish=Vanish.in_handler(delay=0.2))
            start = time.perf_counter()
            await exchange.run()
            return exchange, time.perf_counter() - start

    exchange, elapsed = run(main())
    assert isinstance(exchange.reason, ClientDisconnected)
    assert exchange.status is None  # nothing was sent to the client that left
    assert elapsed < 0.2 + TOKEN_NOT_POOL
    [record] = [r for r in caplog.records if r.name == "request_aborted"]
    assert "(499)" in record.getMessage()


def test_a_request_whose_deadline_passes_waiting_for_a_slot_gets_504(
    slow_server: SlowServer, hx: ModuleType
) -> None:
    async def main() -> tuple[Exchange, float]:
        async with one_slot_client(hx) as client, held(client, slow_server):
            app = RequestAbortedMiddleware(
                handler_calling_upstream(client, slow_server), timeout=0.3
            )
            exchange = Exchange(app, path="/search")
            start = time.perf_counter()
            await exchange.run()
            return exchange, time.perf_counter() - start

    exchange, elapsed = run(main())
    assert isinstance(exchange.reason, RequestTimedOut)
    assert exchange.status == 504
    assert 0.25 < elapsed < 0.3 + TOKEN_NOT_POOL
