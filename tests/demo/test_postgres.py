"""The demo on PostgreSQL: the same endpoints, and cancellation proved in ``pg_stat_activity``.

PostgreSQL shows what SQLite cannot: the backend that ran the statement. When the client leaves,
that backend must be back to ``idle`` - not ``active``, not ``idle in transaction`` - within
``PROMPTLY``, because the token sent a cancel request rather than abandoning the query.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests._fixtures.pgbouncer import PgBouncer
from tests._fixtures.postgres import PostgresDatabase, PostgresServer
from tests._fixtures.servers import ROOT, ServerProcess

from ._support import PROMPTLY, Demo, assert_quiet_abort, named, open_request, wait_until
from .conftest import launch, seed_command

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ROWS = 1_000_000  # half the default: the report still takes seconds, the seed a few


@pytest.fixture(scope="module")
def pg_seeded(postgres: PostgresServer) -> Iterator[PostgresDatabase]:
    name = postgres.create_database()
    database = PostgresDatabase(postgres, name)
    try:
        subprocess.run(
            seed_command(database.dsn, "--rows", str(ROWS)),
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        yield database
    finally:
        postgres.drop_database(name)


EVERY_URL = pytest.mark.parametrize(
    "pg_demo", ["asyncpg", "psycopg", "asyncpg-pgbouncer", "psycopg-pgbouncer"], indirect=True
)
ASYNCPG = pytest.mark.parametrize("pg_demo", ["asyncpg"], indirect=True)


@pytest.fixture(scope="module")
def pg_demo(
    request: pytest.FixtureRequest,
    pg_seeded: PostgresDatabase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Demo]:
    """The demo on the seeded database, switched between drivers and PgBouncer by
    ``DATABASE_URL`` alone, as docs/demo.md tells users to do. Each URL costs a demo start (a few
    seconds), so the endpoints and the aborted report run on every URL (``EVERY_URL``) and the
    rest on asyncpg; the library's own tests cover each guarantee on every path."""
    driver, _, via = str(request.param).partition("-")
    if via:
        bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
        url = bouncer.url(pg_seeded.name, driver) + "?pgbouncer=transaction"
    else:
        url = pg_seeded.server.url(pg_seeded.name, driver)
    servers: list[ServerProcess] = []
    try:
        directory = tmp_path_factory.mktemp(f"pg-demo-{request.param}")
        yield launch(directory, {"DATABASE_URL": url}, pg_seeded, servers)
    finally:
        for server in servers:
            server.stop()


def busy_backends(database: PostgresDatabase, *, besides: int | None = None) -> list[Any]:
    """The demo's backends doing anything but waiting for their next statement."""
    return [row for row in database.backends() if row["state"] != "idle" and row["pid"] != besides]


class RowLock:
    """Holds ``SELECT ... FOR UPDATE`` on one row from a side connection until released."""

    def __init__(self, database: PostgresDatabase, sql: str) -> None:
        self._database, self._sql = database, sql
        self._held, self._release = threading.Event(), threading.Event()
        self.pid: int | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._hold()))

    async def _hold(self) -> None:
        async with self._database.side_connection() as connection:
            transaction = connection.transaction()
            await transaction.start()
            await connection.execute(self._sql)
            self.pid = await connection.fetchval("SELECT pg_backend_pid()")
            self._held.set()
            await asyncio.to_thread(self._release.wait)
            await transaction.rollback()

    def __enter__(self) -> RowLock:
        self._thread.start()
        assert self._held.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._thread.join()


@EVERY_URL
def test_endpoints_work_on_postgres(pg_demo: Demo) -> None:
    pg_demo.mark_log()
    search = pg_demo.get("/search", params={"q": "kettle", "limit": 3}).json()
    assert len(search["products"]) == 3 and len(search["recommendations"]) == 3

    report = pg_demo.get("/reports/sales", params={"from": "2025-12-30", "to": "2025-12-31"})
    assert report.status_code == 200 and len(report.json()["rows"]) == 40

    order = pg_demo.post(
        "/orders", json={"customer_id": 9, "items": [{"product_id": 5, "quantity": 1}]}
    )
    assert order.status_code == 201, order.text

    health = pg_demo.get("/healthz").json()
    assert health["status"] == "ok" and health["pool"]["in_use"] == 0
    assert "Traceback" not in pg_demo.log()


@EVERY_URL
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_report_query_is_cancelled_in_postgres(pg_demo: Demo) -> None:
    pg_demo.mark_log()
    database: PostgresDatabase = pg_demo.database
    # The whole history: seconds of PostgreSQL work on any machine, well past curl's patience.
    report = f"{pg_demo.url}/reports/sales?from=2000-01-01"
    curl = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--max-time", "1", report])
    wait_until(
        lambda: any("row_number" in (row["query"] or "") for row in busy_backends(database)),
        5, "the report's query running in PostgreSQL",
    )  # fmt: skip

    assert curl.wait(10) == 28
    left_at = time.monotonic()

    idle_at = wait_until(lambda: not busy_backends(database), 5, "the backend going idle")
    assert idle_at - left_at < PROMPTLY
    assert_quiet_abort(pg_demo, "GET", "/reports/sales")


@ASYNCPG
def test_order_waiting_on_a_row_lock_is_cancelled_and_rolled_back(pg_demo: Demo) -> None:
    pg_demo.mark_log()
    database: PostgresDatabase = pg_demo.database
    since = len(pg_demo.events())
    lock = "SELECT * FROM stock WHERE product_id = 23 FOR UPDATE"
    with RowLock(database, lock) as holder:
        body = json.dumps({"customer_id": 77, "items": [{"product_id": 23, "quantity": 1}]})
        client = open_request(pg_demo.port, "POST", "/orders", body=body.encode())
        # The order's INSERTs are done; its stock UPDATE waits for our row lock.
        wait_until(
            lambda: any(
                "UPDATE stock" in (row["query"] or "")
                for row in busy_backends(database, besides=holder.pid)
            ),
            5, "the order's UPDATE waiting for the row lock",
        )  # fmt: skip

        client.close()
        left_at = time.monotonic()

        idle_at = wait_until(
            lambda: not busy_backends(database, besides=holder.pid), 5, "the order's backend idle"
        )
        assert idle_at - left_at < PROMPTLY  # cancelled while still blocked, then rolled back

    assert_quiet_abort(pg_demo, "POST", "/orders")
    finished = named(pg_demo.events(since), "/orders", "request.finished")
    assert finished[0]["outcome"] == "OperationCancelled"
    assert database.query("SELECT count(*) AS n FROM orders WHERE customer_id = 77")[0]["n"] == 0


@ASYNCPG
def test_export_cursor_is_closed_when_the_client_leaves(pg_demo: Demo) -> None:
    pg_demo.mark_log()
    database: PostgresDatabase = pg_demo.database
    client = open_request(pg_demo.port, "GET", "/reports/sales/export?from=2024-01-01")
    received = b""
    while len(received) < 256 * 1024:
        chunk = client.recv(65536)
        assert chunk, f"the export ended after {len(received)} bytes: {received[:500]!r}"
        received += chunk
    assert busy_backends(database)  # mid-stream: a transaction holds the server-side cursor

    client.close()
    left_at = time.monotonic()

    idle_at = wait_until(lambda: not busy_backends(database), 5, "the export's backend idle")
    assert idle_at - left_at < PROMPTLY
    assert_quiet_abort(pg_demo, "GET", "/reports/sales/export")
