"""The Prometheus hook: aborts counted by reason and route, and how long stopping took."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Message, Scope

from request_aborted import ClientDisconnected, RequestAbortedMiddleware, request_aborted
from request_aborted.prometheus import UNMATCHED, PrometheusAbortHook
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


async def wait_then_404(request: Request, exc: Exception) -> Response:
    """A 404 that takes its time, so a client can leave an unmatched route while it runs."""
    async with request_aborted(request).scope():
        await asyncio.sleep(10)
    return PlainTextResponse("not found", status_code=404)


async def routed(app: Starlette, paths: list[str]) -> list[Scope]:
    """The scopes as the real router leaves them (with "route" only where one matched)."""

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    scopes: list[Scope] = []
    for path in paths:
        scope: Scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                        "root_path": "", "query_string": b"", "headers": []}  # fmt: skip
        await app(scope, receive, send)
        scopes.append(scope)
    return scopes


async def plain(request: Request) -> Response:
    return PlainTextResponse("ok")


def test_metric_cardinality_unmatched_routes_share_one_label() -> None:
    registry = CollectorRegistry()
    hook = PrometheusAbortHook(registry)
    app = Starlette(
        routes=[Route("/reports/{name}", plain), Mount("/static", app=PlainTextResponse("css"))]
    )
    paths = [f"/wp-admin/{number}.php" for number in range(5_000)]

    for scope in asyncio.run(routed(app, [*paths, "/reports/sales", "/static/app.css"])):
        hook(scope, ClientDisconnected(), 0.0)

    routes = {
        sample.labels["route"]
        for metric in registry.collect()
        for sample in metric.samples
        if "route" in sample.labels
    }
    assert routes == {UNMATCHED, "/reports/{name}", "/static"}
    assert len(generate_latest(registry)) < 10_000  # was 2.9 MB for 5,000 raw paths
    unmatched = {"reason": "ClientDisconnected", "route": UNMATCHED}
    assert registry.get_sample_value("requests_aborted_total", unmatched) == 5_000


def test_metric_cardinality_an_aborted_404_is_counted_as_unmatched() -> None:
    registry = CollectorRegistry()
    app = RequestAbortedMiddleware(
        Starlette(
            routes=[Route("/reports/{name}", report)], exception_handlers={404: wait_then_404}
        ),
        on_abort=PrometheusAbortHook(registry),
    )

    for path in ("/.env", "/admin/config.php"):
        asyncio.run(Exchange(app, path=path, vanish=Vanish.in_handler(delay=0.02)).run())

    unmatched = {"reason": "ClientDisconnected", "route": UNMATCHED}
    assert registry.get_sample_value("requests_aborted_total", unmatched) == 2
