"""The route table. Handlers are thin: parse, call one service with the token, shape the answer.

Every handler declares ``token: CancellationToken``; ``inject`` binds it to the request's token.
With ``HONOR_CANCELLATION=0`` (benchmarks only) the same handlers get ``CancellationToken.NONE``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.routing import BaseRoute, Route

from request_aborted import Readiness, inject

from ..benchmark import ignoring_cancellation
from ..debug import DebugEvents, debug_routes
from ..metrics import DemoMetrics
from .health import healthz
from .orders import place_order
from .reports import export, report
from .search import search
from .uploads import upload

__all__ = ["build_routes"]


def build_routes(
    *, honor_cancellation: bool, metrics: DemoMetrics, debug: DebugEvents | None
) -> list[BaseRoute]:
    def bind(handler: Callable[..., Any]) -> Callable[..., Any]:
        return inject(handler if honor_cancellation else ignoring_cancellation(handler))

    routes: list[BaseRoute] = [
        Route("/search", bind(search)),
        Route("/reports/{name}", bind(report)),
        Route("/reports/{name}/export", bind(export)),
        Route("/orders", bind(place_order), methods=["POST"]),
        Route("/uploads", bind(upload), methods=["POST"]),
        Route("/healthz", bind(healthz)),
        Route("/readyz", Readiness()),  # 503 from the first shutdown signal on
        Route("/metrics", metrics.endpoint),
    ]
    if debug is not None:
        routes += debug_routes(debug)
    return routes
