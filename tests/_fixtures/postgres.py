"""A real PostgreSQL for the tests and benchmarks, started from the binaries the machine has.

Cancellation has to be proved against a real server: the cancel request, ``statement_timeout``,
``pg_stat_activity`` and backend processes are what the integration is about, and no fake has them.
The server runs in a temporary directory on a free 127.0.0.1 port with trust authentication and
durability switched off (startup stays around a second), and is stopped at the end of the session.

PostgreSQL refuses to run as root, and CI does run as root: then the data directory is handed to an
unprivileged account (``nobody``, or a ``request_aborted_pg`` system user created on the spot) and
every server binary runs as that account.

The start/stop logic is plain functions and a class so ``bench/`` can start its own server::

    from tests._fixtures.postgres import PostgresServer
    with PostgresServer.start_new() as pg: ...
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest

__all__ = ["PostgresDatabase", "PostgresServer", "find_binaries", "postgres", "postgres_db"]

SERVICE_USER = "request_aborted_pg"
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
}


def find_binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and postgres, if any."""
    candidates = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [os.path.dirname(p) for p in filter(None, [shutil.which("initdb")])]
    usable = [Path(c) for c in candidates if os.access(Path(c) / "initdb", os.X_OK)]
    usable = [c for c in usable if os.access(c / "postgres", os.X_OK)]

    def version(path: Path) -> float:
        try:
            return float(path.parent.name)
        except ValueError:
            return 0.0

    return max(usable, key=version, default=None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _service_account() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or ``None`` when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        try:
            entry = pwd.getpwnam("nobody")
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 SERVICE_USER],
                check=True, capture_output=True,
            )  # fmt: skip
            entry = pwd.getpwnam(SERVICE_USER)
    return entry.pw_uid, entry.pw_gid


@dataclass
class PostgresServer:
    """A PostgreSQL server process and its data directory; ``stop()``/``start()`` keep the port."""

    bindir: Path
    root: Path
    port: int
    account: tuple[int, int] | None
    user: str = "postgres"
    host: str = "127.0.0.1"
    database: str = "postgres"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start_new(cls, bindir: Path | None = None) -> Self:
        """initdb a fresh cluster in a temporary directory and start it."""
        bindir = bindir or find_binaries()
        if bindir is None:
            raise FileNotFoundError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
        account = _service_account()
        # The service account must be able to reach the directory: $TMPDIR may be under /root.
        parent = "/tmp" if account is not None and os.path.isdir("/tmp") else None
        root = Path(tempfile.mkdtemp(prefix="request-aborted-pg-", dir=parent))
        server = cls(bindir, root, _free_port(), account)
        try:
            if account is not None:
                os.chown(root, *account)
            (root / "socket").mkdir()
            if account is not None:
                os.chown(root / "socket", *account)
            server._run(
                "initdb", "-D", str(root / "data"), "-U", server.user, "--auth=trust",
                "--no-sync", "--locale=C", "-E", "UTF8", "--no-instructions",
            )  # fmt: skip
            server.start()
        except BaseException:
            server.close()
            raise
        return server

    @property
    def dsn(self) -> str:
        """SQLAlchemy URL for the asyncpg dialect."""
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def asyncpg_dsn(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (again) on the same port and wait until it accepts connections."""
        if self.running:
            return
        options = [f"-c{name}={value}" for name, value in _SETTINGS.items()]
        argv = [str(self.bindir / "postgres"), "-D", str(self.root / "data"), "-p", str(self.port),
                "-k", str(self.root / "socket"), *options]  # fmt: skip
        log = (self.root / "server.log").open("ab")
        with log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, **self._as_account()
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited {self.process.returncode}:\n{self.log()}")
            try:
                self.query("SELECT 1")
                return
            except Exception as exc:  # refused, or "the database system is starting up"
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"postgres did not start: {exc}\n{self.log()}") from exc
            time.sleep(0.02)

    def stop(self, mode: str = "fast", timeout: float = 10.0) -> None:
        """Stop the server: ``fast`` (SIGINT) disconnects clients; ``immediate`` is a crash."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGQUIT if mode == "immediate" else signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop the server and delete its files."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def url(self, database: str, driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://{self.user}@{self.host}:{self.port}/{database}"

    async def connect(self, database: str | None = None) -> Any:
        """A plain asyncpg connection on the side, e.g. to watch ``pg_stat_activity``."""
        import asyncpg  # type: ignore[import-untyped]

        return await asyncpg.connect(
            host=self.host, port=self.port, user=self.user, database=database or self.database
        )

    @contextlib.asynccontextmanager
    async def side_connection(self, database: str | None = None) -> AsyncIterator[Any]:
        conn = await self.connect(database)
        try:
            yield conn
        finally:
            await conn.close()

    async def fetch(self, sql: str, *args: object, database: str | None = None) -> list[Any]:
        async with self.side_connection(database) as conn:
            return list(await conn.fetch(sql, *args))

    async def script(self, sql: str, database: str | None = None) -> None:
        """Run several ``;``-separated statements (simple query protocol, no parameters)."""
        async with self.side_connection(database) as conn:
            await conn.execute(sql)

    def query(self, sql: str, *args: object, database: str | None = None) -> list[Any]:
        """Run ``sql`` on a side connection from synchronous code (even inside a running loop)."""
        rows: list[Any] = self._in_thread(lambda: self.fetch(sql, *args, database=database))
        return rows

    def run_script(self, sql: str, database: str | None = None) -> None:
        self._in_thread(lambda: self.script(sql, database))

    def _in_thread(self, work_factory: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        result: list[Any] = []
        error: list[BaseException] = []

        def work() -> None:
            try:
                result.append(asyncio.run(work_factory()))
            except BaseException as exc:  # re-raised in the caller's thread
                error.append(exc)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        if error:
            raise error[0]
        return result[0]

    def backends(self, database: str) -> list[Any]:
        """Client backends connected to ``database`` (the side connection excluded)."""
        return self.query(
            "SELECT pid, state, backend_start, query FROM pg_stat_activity"
            " WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            database,
        )

    def create_database(self, name: str | None = None, template: str = "template0") -> str:
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self.query(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name

    def drop_database(self, name: str) -> None:
        self.query(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _as_account(self) -> dict[str, Any]:
        if self.account is None:
            return {}
        uid, gid = self.account
        return {"user": uid, "group": gid, "extra_groups": []}

    def _run(self, binary: str, *args: str) -> None:
        completed = subprocess.run(
            [str(self.bindir / binary), *args], capture_output=True, **self._as_account()
        )
        if completed.returncode != 0:
            output = (completed.stdout + completed.stderr).decode(errors="replace")
            raise RuntimeError(f"{binary} failed ({completed.returncode}):\n{output}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class PostgresDatabase:
    """A database of its own for one test, on the session's server."""

    server: PostgresServer
    name: str

    @property
    def dsn(self) -> str:
        return self.server.url(self.name)

    @property
    def asyncpg_dsn(self) -> str:
        s = self.server
        return f"postgresql://{s.user}@{s.host}:{s.port}/{self.name}"

    def query(self, sql: str, *args: object) -> list[Any]:
        return self.server.query(sql, *args, database=self.name)

    def run_script(self, sql: str) -> None:
        self.server.run_script(sql, database=self.name)

    async def fetch(self, sql: str, *args: object) -> list[Any]:
        return await self.server.fetch(sql, *args, database=self.name)

    def backends(self) -> list[Any]:
        return self.server.backends(self.name)

    def side_connection(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.server.side_connection(self.name)


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: tests that need it must run here)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL for the whole session (skipped without binaries, failed on CI).

    ``scripts/test --quick`` sets ``REQUEST_ABORTED_TESTS_QUICK``: the tests that need a server
    (some only through a fixture parameter, so no marker selects them) are skipped, and say so.
    """
    if os.environ.get("REQUEST_ABORTED_TESTS_QUICK"):
        pytest.skip("scripts/test --quick runs without PostgreSQL (scripts/test runs this)")
    bindir = find_binaries()
    if bindir is None:
        _missing("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
    server = PostgresServer.start_new(bindir)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_db(postgres: PostgresServer) -> Iterator[PostgresDatabase]:
    """A fresh, empty database for one test, dropped (connections and all) afterwards."""
    postgres.start()  # a fault test may have left the server stopped
    name = postgres.create_database()
    try:
        yield PostgresDatabase(postgres, name)
    finally:
        if postgres.running:
            postgres.drop_database(name)
