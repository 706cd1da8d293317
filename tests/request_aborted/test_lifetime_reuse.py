"""A module-level app with an ``ApplicationLifetime``, as the README shows it, under TestClient.

Most Starlette and FastAPI suites open one ``with TestClient(app):`` per test (a fixture). Each of
those sessions is a real lifespan startup and shutdown of the same app object, so the lifetime
must start afresh after it stopped, and still refuse a second run while one is going.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from request_aborted import (
    ApplicationLifetime,
    BackgroundService,
    CancellationToken,
    RequestAbortedMiddleware,
    inject,
)


class Ticker(BackgroundService):
    """Records each run it is started for and how that run's stopping token ended it."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def execute(self, stopping_token: CancellationToken) -> None:
        self.events.append("started")
        await stopping_token.wait()
        self.events.append("stopped")


registered = Ticker()  # added at module level: part of every run
per_run: list[Ticker] = []  # added by the app's own lifespan: one per run

lifetime = ApplicationLifetime(grace=5, handle_signals=False)
lifetime.add_service(registered)


@asynccontextmanager
async def app_lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
    ticker = Ticker()
    per_run.append(ticker)
    lifetime.add_service(ticker)
    yield {"run": len(per_run)}


@inject
async def status(request: Request, lifetime: ApplicationLifetime) -> JSONResponse:
    return JSONResponse(
        {
            "run": request.state.run,
            "phase": lifetime.phase,
            "started": lifetime.started.is_cancellation_requested,
            "stopping": lifetime.stopping.is_cancellation_requested,
        }
    )


app = Starlette(
    routes=[Route("/status", status)],
    middleware=[Middleware(RequestAbortedMiddleware)],
    lifespan=lifetime.lifespan(app_lifespan),
)


@pytest.fixture
def client() -> Iterator[TestClient]:
    """The per-test fixture most suites have."""
    with TestClient(app) as test_client:
        yield test_client


def test_three_sequential_sessions_each_start_and_stop_afresh() -> None:
    first_run = len(per_run) + 1
    for run in range(first_run, first_run + 3):
        with TestClient(app) as test_client:
            assert test_client.get("/status").json() == {
                "run": run,
                "phase": "started",
                "started": True,
                "stopping": False,
            }
        assert lifetime.phase == "stopped"
        assert lifetime.stopped.is_cancellation_requested
        assert per_run[-1].events == ["started", "stopped"]  # this run's service, once

    assert registered.events[-6:] == ["started", "stopped"] * 3


def test_a_per_test_client_fixture_gets_a_running_app(client: TestClient) -> None:
    assert client.get("/status").json()["phase"] == "started"


def test_a_second_per_test_client_fixture_gets_a_running_app_too(client: TestClient) -> None:
    assert client.get("/status").json()["phase"] == "started"


def test_a_second_run_while_one_is_going_is_refused_with_a_clear_message() -> None:
    with TestClient(app) as first:
        with pytest.raises(RuntimeError, match="already running an application"):  # noqa: SIM117
            with TestClient(app):
                pass
        assert first.get("/status").json()["phase"] == "started"  # the first run is unharmed


def test_a_run_that_failed_to_start_does_not_block_the_next() -> None:
    broken = ApplicationLifetime(handle_signals=False)

    @asynccontextmanager
    async def failing(app: Any) -> AsyncIterator[None]:
        raise OSError("database unreachable")
        yield

    async def main() -> str:
        with pytest.raises(OSError, match="unreachable"):
            async with broken.lifespan(failing)(None):
                pass
        async with broken.lifespan()(None):
            return broken.phase

    assert asyncio.run(main()) == "started"
