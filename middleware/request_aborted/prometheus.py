"""Prometheus metrics for aborted requests (extra ``[prometheus]``).

``PrometheusAbortHook`` is an ``on_abort`` hook: it counts aborted requests by reason and route, and
observes how long the handler kept running after its token fired - the number that tells whether the
code below the handler honours the token (near zero) or ignores it (the rest of the work's length).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.routing import Mount

from ._request import FIRED_AT_KEY  # set before on_abort runs

if TYPE_CHECKING:
    from starlette.types import Scope

__all__ = ["UNMATCHED", "PrometheusAbortHook"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class PrometheusAbortHook:
    """Pass as ``RequestAbortedMiddleware(on_abort=PrometheusAbortHook())``."""

    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "") -> None:
        kwargs = {} if registry is None else {"registry": registry}
        self.aborted = Counter(
            "requests_aborted",
            "Requests whose cancellation token fired, by reason and route.",
            ["reason", "route"],
            namespace=namespace,
            **kwargs,  # type: ignore[arg-type]
        )
        self.stop_latency = Histogram(
            "request_abort_stop_seconds",
            "Time from the request's token firing to its handler returning.",
            ["reason"],
            namespace=namespace,
            buckets=_BUCKETS,
            **kwargs,  # type: ignore[arg-type]
        )

    def __call__(self, scope: Scope, reason: BaseException, elapsed: float) -> None:
        kind = type(reason).__name__
        self.aborted.labels(kind, route_of(scope)).inc()
        fired_at = scope.get(FIRED_AT_KEY)
        if fired_at is not None:
            self.stop_latency.labels(kind).observe(max(0.0, time.monotonic() - fired_at))


UNMATCHED = "<unmatched>"
"""The one ``route`` label of every request no route matched (404s, scanners, typos)."""


def route_of(scope: Scope) -> str:
    """The route's path template when routing got that far, else ``UNMATCHED``.

    Never the raw path: every distinct path would be a new time series, and anybody can send
    paths (5,000 scanner requests once made 5,002 series here). A ``Mount`` that is itself the
    match (a sub-app the router cannot see into, such as ``StaticFiles``) counts as one route.
    Inside a mount the label is the mount's ``root_path`` plus the inner template, so a mount
    whose own path has parameters would put their values in the label: keep those out of
    mount paths, or label with your own hook.
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return UNMATCHED
    if isinstance(route, Mount):
        return str(scope.get("app_root_path", "")) + template
    return str(scope.get("root_path", "")) + template
