import asyncio

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from request_aborted import CancellationToken, RequestAbortedMiddleware, inject
from request_aborted.opentelemetry import OpenTelemetryAbortHook


@inject
async def report(token: CancellationToken) -> PlainTextResponse:
    async with token.scope():
        await asyncio.sleep(5)  # your query, with the token
    return PlainTextResponse("done")


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))

starlette_app = Starlette(
    routes=[Route("/report", report)],
    middleware=[
        Middleware(RequestAbortedMiddleware, timeout=2, on_abort=OpenTelemetryAbortHook()),
    ],
)
# The instrumentation goes outside: its server span is still open when on_abort runs.
app = OpenTelemetryMiddleware(starlette_app, tracer_provider=provider)
