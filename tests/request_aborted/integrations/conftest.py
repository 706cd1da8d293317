"""Integration fixtures: the slow HTTP server (PostgreSQL comes from ``tests/_fixtures``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._slow_server import SlowServer, running_slow_server


@pytest.fixture(scope="session")
def slow_server() -> Iterator[SlowServer]:
    """uvicorn serving a small, slow Starlette app on 127.0.0.1, for the whole session."""
    with running_slow_server() as server:
        yield server
