"""The Prometheus hook: aborts counted by reason and route, and how long stopping took."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from request_aborted import RequestAbortedMiddleware, request_aborted
from request_aborted.prometheus import PrometheusAbortHook
from request_aborted.testing import Exchange, Vanish


async def report(request: Request) -> Response:
    async with request_aborted(request).scope():
        await asyncio.sleep(10)
    return PlainTextResponse("never")


async def stubborn(request: Request) -> Response:
    request_aborted(request).register(lambda reason: None)  # observes, then ignores it
    await asyncio.sleep(0.3)
    return PlainTextResponse("late")


def app_with(hook: PrometheusAbortHook) -> RequestAbortedMiddleware:
    routes = [Route("/reports/{name}", report), Route("/stubborn", stubborn)]
    return RequestAbortedMiddleware(Starlette(routes=routes), on_abort=hook)


def test_aborts_are_counted_by_reason_and_route_template() -> None:
    registry = CollectorRegistry()
    app = app_with(PrometheusAbortHook(registry))

    for name in ("sales", "stock"):
        exchange = Exchange(app, path=f"/reports/{name}", vanish=Vanish.in_handler(delay=0.05))
        asyncio.run(exchange.run())

    count = registry.get_sample_value(
        "requests_aborted_total", {"reason": "ClientDisconnected", "route": "/reports/{name}"}
    )
    assert count == 2


def test_stop_latency_shows_a_handler_that_ignores_its_token() -> None:
    registry = CollectorRegistry()
    app = app_with(PrometheusAbortHook(registry))

    asyncio.run(Exchange(app, path="/reports/sales", vanish=Vanish.in_handler(0.05)).run())
    asyncio.run(Exchange(app, path="/stubborn", vanish=Vanish.in_handler(0.05)).run())

    labels = {"reason": "ClientDisconnected"}
    fast = registry.get_sample_value("request_abort_stop_seconds_bucket", {**labels, "le": "0.05"})
    total = registry.get_sample_value("request_abort_stop_seconds_count", labels)
    assert total == 2
    assert fast == 1  # the report stopped at once; the stubborn handler ran on for ~0.25 s
