"""OpenTelemetryAbortHook: the server span of an aborted request says what the client was given.

OpenTelemetry's ASGI middleware wraps ours and records spans into the SDK's in-memory exporter;
clients leave through ``request_aborted.testing.Exchange``, which really closes the request
(TestClient cannot show a client leaving); one timeout goes through TestClient as well.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from fastapi import FastAPI
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp

from request_aborted import (
    CancellationToken,
    CancellationTokenSource,
    ClientDisconnected,
    RequestAbortedMiddleware,
    inject,
    request_timeout,
)
from request_aborted.fastapi import RequestAborted
from request_aborted.opentelemetry import OpenTelemetryAbortHook
from request_aborted.testing import Exchange, Vanish


@inject
async def slow(token: CancellationToken) -> PlainTextResponse:
    async with token.scope():
        await asyncio.sleep(10)
    return PlainTextResponse("done")


@request_timeout(0.2)
@inject
async def overrun(token: CancellationToken) -> PlainTextResponse:
    async with token.scope():
        await asyncio.sleep(10)
    return PlainTextResponse("never")


@request_timeout(0.2)
@inject
async def stream(token: CancellationToken) -> StreamingResponse:
    async def rows() -> AsyncIterator[bytes]:
        yield b"first row\n"
        async with token.scope():
            await asyncio.sleep(10)
        yield b"never\n"

    return StreamingResponse(rows())


async def quick(request: Request) -> PlainTextResponse:
    return PlainTextResponse("quick")


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    yield memory
    memory.clear()


def traced(
    exporter: InMemorySpanExporter,
    *,
    shutdown: CancellationToken | None = None,
    hook: OpenTelemetryAbortHook | None = None,
) -> ASGIApp:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = Starlette(
        routes=[
            Route("/slow", slow),
            Route("/overrun", overrun),
            Route("/stream", stream),
            Route("/quick", quick),
        ],
        middleware=[
            Middleware(
                RequestAbortedMiddleware,
                shutdown=shutdown,
                on_abort=hook or OpenTelemetryAbortHook(),
            )
        ],
    )
    # Outside ours, as FastAPIInstrumentor places it: its span is open while on_abort runs.
    return OpenTelemetryMiddleware(app, tracer_provider=provider)


def server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER]
    assert len(spans) == 1, spans
    return spans[0]


def test_client_that_left_is_499_with_its_reason_as_an_event(
    exporter: InMemorySpanExporter,
) -> None:
    exchange = Exchange(traced(exporter), path="/slow", vanish=Vanish.in_handler(delay=0.05))
    asyncio.run(exchange.run())

    span = server_span(exporter)
    assert exchange.status is None  # the client got nothing...
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 499  # ...which the span now says
    assert span.attributes["http.status_code"] == 499  # the instrumentation's default names
    assert span.status.status_code is StatusCode.UNSET  # a client leaving is no server error
    [event] = span.events
    assert event.name == "ClientDisconnected"
    assert event.attributes is not None
    assert 0 <= event.attributes["request_aborted.stop_seconds"] < 1  # the handler honoured it
    assert event.attributes["request_aborted.elapsed_seconds"] >= 0.04  # asyncio fires timers up to
    # a clock tick early, and the handler started a little after the vanish was scheduled
    assert event.attributes["request_aborted.response_started"] is False


def test_timeout_is_the_504_sent_an_error_status_and_a_request_timed_out_event(
    exporter: InMemorySpanExporter,
) -> None:
    exchange = Exchange(traced(exporter), path="/overrun")
    asyncio.run(exchange.run())

    span = server_span(exporter)
    assert exchange.status == 504
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 504
    assert span.status.status_code is StatusCode.ERROR
    # The event is on the span: the hook ran before the 504's last byte ended the span.
    [event] = span.events
    assert event.name == "RequestTimedOut"
    assert event.attributes is not None
    assert event.attributes["http.response.status_code"] == 504
    assert event.attributes["request_aborted.reason"] == "request timed out after 0.2s"
    assert event.attributes["request_aborted.elapsed_seconds"] >= 0.19  # a timer may fire early


def test_timeout_after_the_headers_keeps_the_status_that_was_sent(
    exporter: InMemorySpanExporter,
) -> None:
    exchange = Exchange(traced(exporter), path="/stream")
    asyncio.run(exchange.run())

    span = server_span(exporter)
    assert exchange.status == 200
    assert exchange.body == b"first row\n"
    assert span.attributes is not None
    assert span.attributes["http.status_code"] == 200  # as the instrumentation recorded it
    assert "http.response.status_code" not in span.attributes
    assert span.status.status_code is StatusCode.ERROR  # cut short all the same
    [event] = span.events
    assert event.name == "RequestTimedOut"
    assert event.attributes is not None
    assert event.attributes["request_aborted.response_started"] is True


def test_shutdown_is_503_and_an_error(exporter: InMemorySpanExporter) -> None:
    shutdown = CancellationTokenSource()

    async def main() -> Exchange:
        exchange = Exchange(traced(exporter, shutdown=shutdown.token), path="/slow")
        running = asyncio.create_task(exchange.run())
        await asyncio.sleep(0.05)
        shutdown.cancel()
        return await running

    exchange = asyncio.run(main())

    span = server_span(exporter)
    assert exchange.status == 503
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 503
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["ServerShuttingDown"]


def test_new_attribute_names_only_when_asked(exporter: InMemorySpanExporter) -> None:
    hook = OpenTelemetryAbortHook(legacy_attributes=False)
    exchange = Exchange(traced(exporter, hook=hook), path="/slow", vanish=Vanish.in_handler())
    asyncio.run(exchange.run())

    attributes = server_span(exporter).attributes
    assert attributes is not None
    assert attributes["http.response.status_code"] == 499
    assert "http.status_code" not in attributes


def test_requests_that_complete_get_no_event(exporter: InMemorySpanExporter) -> None:
    exchange = Exchange(traced(exporter), path="/quick")
    asyncio.run(exchange.run())

    span = server_span(exporter)
    assert exchange.status == 200
    assert span.events == ()
    assert span.status.status_code is StatusCode.UNSET


def test_without_a_recording_span_the_hook_does_nothing(exporter: InMemorySpanExporter) -> None:
    # The instrumentation inside ours: its span has ended by the time on_abort runs.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    inner = OpenTelemetryMiddleware(
        Starlette(routes=[Route("/slow", slow)]), tracer_provider=provider
    )
    app = RequestAbortedMiddleware(inner, on_abort=OpenTelemetryAbortHook())
    exchange = Exchange(app, path="/slow", vanish=Vanish.in_handler())
    asyncio.run(exchange.run())

    assert isinstance(exchange.reason, ClientDisconnected)
    assert server_span(exporter).events == ()


fastapi_app = FastAPI()
fastapi_app.add_middleware(RequestAbortedMiddleware, on_abort=OpenTelemetryAbortHook())


@fastapi_app.get("/items/{item}")
async def item(item: int, token: RequestAborted) -> dict[str, int]:
    async with token.scope():
        await asyncio.sleep(10)
    return {"item": item}


def test_fastapi_instrumentor_places_its_span_around_ours(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    FastAPIInstrumentor.instrument_app(fastapi_app, tracer_provider=provider)
    try:
        exchange = Exchange(fastapi_app, path="/items/7", vanish=Vanish.in_handler(delay=0.05))
        asyncio.run(exchange.run())
    finally:
        FastAPIInstrumentor.uninstrument_app(fastapi_app)

    span = server_span(exporter)
    assert span.name == "GET /items/{item}"
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 499
    assert [event.name for event in span.events] == ["ClientDisconnected"]


def test_through_testclient_a_timeout_marks_the_span(exporter: InMemorySpanExporter) -> None:
    with TestClient(traced(exporter)) as client:
        response = client.get("/overrun")

    span = server_span(exporter)
    assert response.status_code == 504
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 504
    assert [event.name for event in span.events] == ["RequestTimedOut"]
