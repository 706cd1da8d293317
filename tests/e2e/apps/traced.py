"""The deployment app under OpenTelemetry's ASGI middleware, its spans written to ``SPANS_FILE``.

One JSON document per line, as the SDK's ``ReadableSpan.to_json`` gives it, so the test can read
what a real server and a real client that left produce.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from request_aborted.opentelemetry import OpenTelemetryAbortHook

from .deployment import build_app


class JsonLinesExporter(SpanExporter):
    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as sink:
            for span in spans:
                sink.write(span.to_json(indent=None) + "\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(Path(os.environ["SPANS_FILE"]))))
# The instrumentation outside RequestAbortedMiddleware, as FastAPIInstrumentor places it.
app = OpenTelemetryMiddleware(build_app(OpenTelemetryAbortHook()), tracer_provider=provider)
