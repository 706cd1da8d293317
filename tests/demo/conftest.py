"""Fixtures for the demo's end-to-end tests: a seeded database and a demo server per session.

Seeding is the slow part, so it happens once: ``python -m app.seed`` (the command users run)
writes a template SQLite file at the demo's default size - the size at which ``GET
/reports/sales`` takes seconds of SQLite CPU - and every server gets its own copy of it.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.logs import LOGGERS
from tests._fixtures.servers import ROOT, ServerProcess, start_server

from ._support import Demo

DEMO_ENV = {
    "DEMO_DEBUG": "1",
    "UPLOAD_MAX_BYTES": str(16 * 1024 * 1024),
    "LOG_LEVEL": "INFO",
}

StartDemo = Callable[..., Demo]


@pytest.fixture(autouse=True)
def demo_loggers_restored() -> Iterator[None]:
    """An app built in this process (``create_app``) sets the level, handler and propagation of
    the ``request_aborted`` and ``app`` loggers; the tests that run after it in the same process
    (the library's, which read the abort line through pytest's capture) must find them as they
    were. A level of WARNING left behind once hid every INFO abort line from ten of them."""
    saved = [
        (logger, logger.level, logger.propagate, list(logger.handlers))
        for logger in map(logging.getLogger, LOGGERS)
    ]
    yield
    for logger, level, propagate, handlers in saved:
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers


def seed_command(url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "app.seed", "--database-url", url, *extra]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded SQLite file at the demo's default size, made once per session."""
    path = tmp_path_factory.mktemp("template") / "demo.db"
    subprocess.run(
        seed_command(f"sqlite+aiosqlite:///{path}"), cwd=ROOT, check=True, capture_output=True
    )
    return path


def copy_database(template: Path, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "demo.db"
    shutil.copyfile(template, target)
    return target


def launch(
    directory: Path,
    env: dict[str, str],
    database: object,
    servers: list[ServerProcess],
    server_name: str = "uvicorn",
) -> Demo:
    uploads = directory / "uploads"
    environment = {**DEMO_ENV, "UPLOAD_DIR": str(uploads), **env}
    # hypercorn --workers 0 serves in one process, so the app itself receives SIGTERM.
    server = start_server(
        "app.main:app",
        directory / f"server-{len(servers)}.log",
        server=server_name,
        http="httptools",
        # and its own shutdown timeout must exceed SHUTDOWN_GRACE, as docs/deployment.md says.
        extra=("--workers", "0", "--graceful-timeout", "10") if server_name == "hypercorn" else (),
        env=environment,
        ready_timeout=60,
    )
    servers.append(server)
    return Demo(server, uploads, database)


@pytest.fixture(scope="session")
def demo(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """The demo as ``uvicorn app.main:app`` runs it (embedded upstream), on its own SQLite copy."""
    directory = tmp_path_factory.mktemp("demo")
    database = copy_database(sqlite_template, directory)
    servers: list[ServerProcess] = []
    running = launch(
        directory, {"DATABASE_URL": f"sqlite+aiosqlite:///{database}"}, database, servers
    )
    try:
        yield running
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def start_demo(sqlite_template: Path, tmp_path: Path) -> Iterator[StartDemo]:
    """Start a demo of this test's own, configured by extra environment variables."""
    servers: list[ServerProcess] = []

    def start(server: str = "uvicorn", **env: str) -> Demo:
        directory = tmp_path / f"demo-{len(servers)}"
        if "DATABASE_URL" in env:
            return launch(directory, env, None, servers, server)
        database = copy_database(sqlite_template, directory)
        sqlite = {"DATABASE_URL": f"sqlite+aiosqlite:///{database}", **env}
        return launch(directory, sqlite, database, servers, server)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def demo_log(demo: Demo) -> Demo:
    """The session's demo, with its log read from the start of this test."""
    demo.mark_log()
    return demo


@pytest.fixture
def shop_db(demo_log: Demo) -> Iterator[sqlite3.Connection]:
    """The demo's SQLite file, opened beside the server (autocommit), closed after the test.

    Closed explicitly: ``with sqlite3.connect(...)`` only commits, and Python 3.13 warns
    (``ResourceWarning``) about every connection left to the garbage collector.
    """
    connection = sqlite3.connect(demo_log.database, isolation_level=None)
    try:
        yield connection
    finally:
        connection.close()
