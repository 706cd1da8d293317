"""Prometheus metrics (``GET /metrics``): the library's abort hook and the demo's own counters.

Each app gets its own registry, so building two apps in one process (tests do) cannot trip over
duplicate metric names, and ``/metrics`` shows exactly this app's numbers. The search page's live
panel is another instrument, with its own module (``app.live_stats``).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from request_aborted.prometheus import PrometheusAbortHook

__all__ = ["DemoMetrics"]


class DemoMetrics:
    """The registry, the library's ``on_abort`` hook (``abort_hook``), the demo's counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.abort_hook = PrometheusAbortHook(registry=self.registry, namespace="demo")
        self.reports = Counter(
            "reports_generated",
            "Reports answered in full.",
            ["report"],
            namespace="demo",
            registry=self.registry,
        )
        self.export_rows = Counter(
            "export_rows",
            "Rows sent in CSV exports.",
            ["report"],
            namespace="demo",
            registry=self.registry,
        )
        self.orders = Counter(
            "orders_placed", "Orders committed.", namespace="demo", registry=self.registry
        )
        self.upload_bytes = Counter(
            "upload_bytes", "Bytes of finished uploads.", namespace="demo", registry=self.registry
        )
        self.recommendation_fallbacks = Counter(
            "recommendation_fallbacks",
            "Searches answered without recommendations, by why.",
            ["reason"],
            namespace="demo",
            registry=self.registry,
        )

    async def endpoint(self, _request: Request) -> Response:
        """``GET /metrics`` in the Prometheus text format."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
