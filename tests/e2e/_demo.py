"""What the load and fault tests share: the demo and its upstream as real processes, seeded
databases made once per session, and the server-side views the tests assert on.

The demo runs as ``uvicorn app.main:app`` (httptools, uvicorn's default loop) with
``DEMO_DEBUG=1``; the recommendations upstream, when a test wants the process boundary, runs as a
second uvicorn of its own (``RECOMMENDER_URL``). What happened is read from the server side: the
demo's ``/debug/events`` and ``/debug/internals``, its log, ``pg_stat_activity``, the files on disk.

Seeding is the slow part, so each database is seeded once per session and copied per test: a file
copy for SQLite, ``CREATE DATABASE ... TEMPLATE`` (half a second for a million rows) for PostgreSQL.
The caches are module globals because every test module builds its own fixtures from these helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from tests._fixtures.postgres import PostgresDatabase, PostgresServer
from tests._fixtures.servers import ROOT, ServerProcess, start_server
from tests.demo._support import Demo, assert_no_traceback

__all__ = [
    "DATABASES",
    "PG_ROWS",
    "SQLITE_ROWS",
    "Curl",
    "assert_clean_log",
    "busy_backends",
    "curls",
    "deadline_headers",
    "demo_on",
    "held_lock",
    "internals",
    "postgres_copy",
    "recording_upstream",
    "running_demo",
    "running_upstream",
    "sqlite_copy",
    "wait_until_quiet",
]

PG_ROWS = 1_000_000
"""The whole-history report takes seconds on PostgreSQL, a one-month report about 0.2 s."""
SQLITE_ROWS = 300_000
"""Enough for a report and an export that outlast curl's ``--max-time 1`` on SQLite."""

DEMO_ENV = {"DEMO_DEBUG": "1", "LOG_LEVEL": "INFO", "UPLOAD_MAX_BYTES": str(32 * 1024 * 1024)}

_sqlite_templates: dict[int, Path] = {}
_postgres_templates: dict[tuple[int, int], str] = {}


def _seed(url: str, rows: int) -> None:
    command = [sys.executable, "-m", "app.seed", "--database-url", url, "--rows", str(rows)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)


def sqlite_copy(tmp_path_factory: pytest.TempPathFactory, directory: Path) -> Path:
    """A fresh copy of the session's seeded SQLite file, in ``directory``."""
    template = _sqlite_templates.get(SQLITE_ROWS)
    if template is None:
        template = tmp_path_factory.mktemp("sqlite-template") / "demo.db"
        _seed(f"sqlite+aiosqlite:///{template}", SQLITE_ROWS)
        _sqlite_templates[SQLITE_ROWS] = template
    directory.mkdir(parents=True, exist_ok=True)
    copy = directory / "demo.db"
    shutil.copyfile(template, copy)
    return copy


@contextlib.contextmanager
def postgres_copy(server: PostgresServer) -> Iterator[PostgresDatabase]:
    """A database of its own, copied from the session's seeded template; dropped afterwards."""
    server.start()  # a fault test may have stopped it
    key = (server.port, PG_ROWS)
    template = _postgres_templates.get(key)
    if template is None:
        template = server.create_database(f"seeded_{PG_ROWS}")
        _seed(server.url(template), PG_ROWS)
        _postgres_templates[key] = template
    name = server.create_database(template=template)
    try:
        yield PostgresDatabase(server, name)
    finally:
        server.start()
        server.drop_database(name)


def _launch(
    app: str, log: Path, servers: list[ServerProcess], env: dict[str, str], factory: bool = False
) -> ServerProcess:
    server = start_server(
        app,
        log,
        server="uvicorn",
        http="httptools",
        env=env,
        extra=["--factory"] if factory else [],
        ready_timeout=60,
    )
    servers.append(server)
    return server


@contextlib.contextmanager
def running_demo(directory: Path, database: Path | PostgresDatabase, **env: str) -> Iterator[Demo]:
    """``uvicorn app.main:app`` on ``database``, stopped when the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    url = (
        database.dsn
        if isinstance(database, PostgresDatabase)
        else f"sqlite+aiosqlite:///{database}"
    )
    environment = {**DEMO_ENV, "DATABASE_URL": url, "UPLOAD_DIR": str(directory / "uploads"), **env}
    servers: list[ServerProcess] = []
    try:
        server = _launch("app.main:app", directory / "demo.log", servers, environment)
        yield Demo(server, directory / "uploads", database)
    finally:
        for server in servers:
            server.stop()


DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
"""The params of a module's ``demo`` fixture that runs on both databases (see ``demo_on``)."""


@contextlib.contextmanager
def demo_on(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str, **env: str
) -> Iterator[Demo]:
    """The demo on a fresh copy of the database ``request.param`` names (one of ``DATABASES``).

    For a module-scoped fixture: ``params=DATABASES``, then ``with demo_on(request,
    tmp_path_factory, "curl") as demo: yield demo``. ``name`` names the directory of its files.
    """
    directory = tmp_path_factory.mktemp(f"{name}-{request.param}")
    if request.param == "sqlite":
        database: Path | PostgresDatabase = sqlite_copy(tmp_path_factory, directory)
        with running_demo(directory, database, **env) as running:
            yield running
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    with postgres_copy(server) as database, running_demo(directory, database, **env) as running:
        yield running


@contextlib.contextmanager
def running_upstream(directory: Path, **env: str) -> Iterator[ServerProcess]:
    """The recommendations upstream in a process of its own, logging the deadline it is given."""
    directory.mkdir(parents=True, exist_ok=True)
    servers: list[ServerProcess] = []
    try:
        yield _launch(
            f"{__name__}:recording_upstream", directory / "upstream.log", servers,
            {"LOG_LEVEL": "INFO", **env}, factory=True,
        )  # fmt: skip
    finally:
        for server in servers:
            server.stop()


def recording_upstream() -> ASGIApp:
    """``app.upstream.main``'s app, behind a note of each call's inbound deadline header.

    The note is the only addition: the upstream's own ``RequestAbortedMiddleware`` (which honours
    ``x-request-timeout-ms``) and handler are the real ones, in their own process.
    """
    from app.upstream.main import app

    logger = logging.getLogger("app.upstream")

    async def recorder(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/recommendations":
            headers = dict(scope["headers"])
            for name in (b"x-request-timeout-ms", b"grpc-timeout"):
                if name in headers:
                    logger.info("deadline header %s=%s", name.decode(), headers[name].decode())
        await app(scope, receive, send)

    return recorder


def deadline_headers(upstream: ServerProcess) -> list[tuple[str, str]]:
    """The deadline headers the upstream received so far, in order."""
    return re.findall(r"deadline header ([a-z-]+)=(\S+)", upstream.log())


def internals(demo: Demo) -> dict[str, Any]:
    """The demo's ``GET /debug/internals``: pools, tasks, descriptors, memory, requests."""
    found: dict[str, Any] = httpx.get(demo.url + "/debug/internals", timeout=10).json()
    return found


def wait_until_quiet(demo: Demo, timeout: float = 15.0) -> dict[str, Any]:
    """Internals once no request is in flight but ours and no pool slot is taken; fail if never.

    Every request the demo started has finished, no database connection is checked out, and no
    httpx pool tracks a request or a busy connection.
    """
    deadline = time.monotonic() + timeout
    while True:
        seen = internals(demo)
        quiet = (
            seen["requests"]["in_flight"] == 0
            and (seen["db_pool"] is None or seen["db_pool"]["checked_out"] == 0)
            and all(pool["requests"] == 0 and pool["busy"] == 0 for pool in seen["http_pools"])
        )
        if quiet:
            return seen
        if time.monotonic() > deadline:
            pytest.fail(f"the demo never became quiet: {seen}\n{demo.log()[-5000:]}")
        time.sleep(0.05)


def busy_backends(database: PostgresDatabase, besides: int | None = None) -> list[Any]:
    """The app's backends doing anything but waiting for their next statement."""
    return [row for row in database.backends() if row["state"] != "idle" and row["pid"] != besides]


@dataclass
class Curl:
    """A real ``curl`` process, its response body going to ``output``; start with ``curls()``."""

    process: subprocess.Popen[bytes]
    output: Path

    def received(self) -> int:
        return self.output.stat().st_size if self.output.exists() else 0

    def finish(self, timeout: float = 30.0) -> tuple[int, float]:
        """Wait for curl to exit by itself: its exit code, and when (``time.monotonic()``)."""
        code = self.process.wait(timeout)
        return code, time.monotonic()

    def kill(self) -> float:
        """SIGKILL: the kernel closes the socket, as when a client machine's process dies."""
        self.process.kill()
        self.process.wait()
        return time.monotonic()


@contextlib.contextmanager
def curls(directory: Path) -> Iterator[Callable[..., Curl]]:
    """``start(url, *options)`` runs curl; whatever is still running at the end is killed.

    A missing curl skips the test, except under ``CI=true``, where it is a failure.
    """
    if shutil.which("curl") is None:
        message = "curl is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    started: list[Curl] = []

    def start(url: str, *options: str) -> Curl:
        output = directory / f"curl-{len(started)}.out"
        argv = ["curl", "--silent", "--output", str(output), *options, url]
        started.append(Curl(subprocess.Popen(argv), output))
        return started[-1]

    try:
        yield start
    finally:
        for curl in started:
            if curl.process.poll() is None:
                curl.kill()


@contextlib.contextmanager
def held_lock(database: Path | PostgresDatabase, product_id: int) -> Iterator[int | None]:
    """Block writers of ``product_id``'s stock from a side connection until the block ends.

    PostgreSQL: ``SELECT ... FOR UPDATE`` on the row (yields the holder's backend pid). SQLite:
    ``BEGIN IMMEDIATE``, SQLite's database-wide write lock (yields ``None``).
    """
    if not isinstance(database, PostgresDatabase):
        connection = sqlite3.connect(database, isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield None
        finally:
            connection.execute("ROLLBACK")
            connection.close()
        return
    postgres: PostgresDatabase = database
    held, release, pid = threading.Event(), threading.Event(), []

    async def hold() -> None:
        async with postgres.side_connection() as connection, connection.transaction():
            await connection.execute(
                "SELECT * FROM stock WHERE product_id = $1 FOR UPDATE", product_id
            )
            pid.append(await connection.fetchval("SELECT pg_backend_pid()"))
            held.set()
            await asyncio.to_thread(release.wait)
            raise _Rollback

    def run() -> None:
        with contextlib.suppress(_Rollback):
            asyncio.run(hold())

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert held.wait(10), "the side connection never took the row lock"
        yield pid[0]
    finally:
        release.set()
        thread.join()


class _Rollback(Exception):
    """Ends the lock holder's transaction by rolling it back."""


def assert_clean_log(log: str) -> None:
    """No traceback, no ERROR (or worse) line: what a client leaving must never cause."""
    assert_no_traceback(log)
    alarming = [line for line in log.splitlines() if re.match(r"(ERROR|CRITICAL)\b", line)]
    assert not alarming, "\n".join(alarming)
