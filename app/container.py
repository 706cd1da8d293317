"""What the handlers reach: the services, built once per process by the lifespan.

The lifespan yields ``{"services": Services(...)}``; Starlette copies that state into every
request, where ``services(request)`` picks it up. No globals, so tests can build several apps.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from services import HealthService, OrdersService, ReportsService, SearchService, UploadsService

from .live_stats import LiveStats
from .metrics import DemoMetrics

__all__ = ["Services", "services"]


@dataclass(frozen=True, slots=True)
class Services:
    search: SearchService
    reports: ReportsService
    orders: OrdersService
    uploads: UploadsService
    health: HealthService
    metrics: DemoMetrics
    live: LiveStats


def services(request: Request) -> Services:
    """The services of the application serving ``request``."""
    found: Services = request.state.services
    return found
