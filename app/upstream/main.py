"""The upstream on its own: ``uvicorn app.upstream.main:app --port 8001`` (Docker Compose does)."""

from __future__ import annotations

import logging

from ..logs import configure_logging
from ..settings import Settings
from .app import create_upstream

__all__ = ["app"]

settings = Settings.from_env()
configure_logging(settings.log_level)
logging.getLogger("app.upstream").info(
    "recommendations upstream: %g-%g ms per call", *settings.recommender_latency_ms
)
app = create_upstream(settings.recommender_latency_ms)
