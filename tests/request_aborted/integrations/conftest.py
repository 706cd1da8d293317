"""Integration fixtures: the slow HTTP server, and the PostgreSQL paths the guarantees must hold on.

PostgreSQL itself comes from ``tests/_fixtures`` (``postgres``, ``postgres_db``, ``pgbouncer``).
``pg_target`` runs a test four times: asyncpg and psycopg, each straight to PostgreSQL and through
PgBouncer in transaction pooling mode. ``hx`` runs an httpx test twice: with httpx and with
httpx2 (the maintained fork, same API), the two packages ``request_aborted.httpx`` serves.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from types import ModuleType

import pytest

from tests._fixtures.pgbouncer import PgBouncer
from tests._fixtures.postgres import PostgresDatabase

from ._slow_server import SlowServer, running_slow_server
from ._support import PgTarget

TARGETS = ["asyncpg", "psycopg", "asyncpg-pgbouncer", "psycopg-pgbouncer"]


@pytest.fixture(scope="session")
def slow_server() -> Iterator[SlowServer]:
    """uvicorn serving a small, slow Starlette app on 127.0.0.1, for the whole session."""
    with running_slow_server() as server:
        yield server


@pytest.fixture(params=TARGETS)
def pg_target(request: pytest.FixtureRequest, postgres_db: PostgresDatabase) -> PgTarget:
    """A fresh database reached with one driver, directly or through PgBouncer."""
    driver, _, via = str(request.param).partition("-")
    bouncer: PgBouncer | None = request.getfixturevalue("pgbouncer") if via else None
    return PgTarget(driver, postgres_db, bouncer)


HTTPX_MODULES = ["httpx", "httpx2"]


@pytest.fixture(params=HTTPX_MODULES)
def hx(request: pytest.FixtureRequest) -> ModuleType:
    """httpx, then httpx2: both are dev dependencies, so a missing one fails under ``CI=true``."""
    name = str(request.param)
    if importlib.util.find_spec(name) is None:
        reason = f"{name} is not installed (pip install -e '.[dev]')"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return importlib.import_module(name)
