"""Real ``curl`` processes against the demo under uvicorn, on SQLite and on PostgreSQL.

What users do to a server: ``--max-time`` runs out, or the process is killed mid-download or
mid-upload. Each test reads from the server side that the work stopped: no statement still running
in ``pg_stat_activity`` (PostgreSQL) or the request finished with the cursor refused (SQLite) within
``PROMPTLY``, the database connection back in the pool, the partial upload gone, no order row.

``tests/demo/`` already covers, with raw sockets or curl, the report query (curl ``--max-time``,
both databases), the export and the order on one database each, and the upload on SQLite; the
tests here add the curl variants it lacks, on both databases.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests._fixtures.postgres import PostgresDatabase
from tests.demo._support import PROMPTLY, Demo, assert_quiet_abort, named, wait_until

from ._demo import (
    DATABASES,
    Curl,
    busy_backends,
    curls,
    demo_on,
    held_lock,
    internals,
)

pytestmark = pytest.mark.e2e

Start = Callable[..., Curl]

EXPORT = "/reports/sales/export"
UPLOAD_BYTES = 12 * 1024 * 1024


@pytest.fixture(scope="module", params=DATABASES)
def demo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Demo]:
    with demo_on(request, tmp_path_factory, "curl") as running:
        yield running


@pytest.fixture
def fresh(demo: Demo) -> Demo:
    """The module's demo, with its log and events read from the start of this test."""
    demo.mark_log()
    return demo


@pytest.fixture
def curl(tmp_path: Path) -> Iterator[Callable[..., Curl]]:
    with curls(tmp_path) as start:
        yield start


@pytest.fixture
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "upload.bin"
    if not path.exists():
        path.write_bytes(b"u" * UPLOAD_BYTES)
    return path


def assert_export_stopped(demo: Demo, since: int, left_at: float) -> None:
    """The export's work ended within ``PROMPTLY`` of the client leaving, as each database shows."""
    if isinstance(demo.database, PostgresDatabase):
        database = demo.database
        idle_at = wait_until(lambda: not busy_backends(database), 5, "the export's backend idle")
        assert idle_at - left_at < PROMPTLY  # the cursor closed, the transaction rolled back
    events = demo.wait_for_event(
        since, lambda e: bool(named(e, "/reports/sales/export", "request.finished"))
    )
    (finished,) = named(events, "/reports/sales/export", "request.finished")
    # Two ways to stop, both prompt, racing: the token refuses the next fetch (the stream raises
    # OperationCancelled), or Starlette's StreamingResponse hears the same http.disconnect from our
    # receive and ends the stream itself (the app returns). The 499 line below shows the client
    # left while the export still ran; a stream that had run to its end would have none.
    assert finished["outcome"] in ("OperationCancelled", "returned")
    assert finished["at"] - left_at < PROMPTLY
    assert_quiet_abort(demo, "GET", "/reports/sales/export")
    assert internals(demo)["db_pool"]["checked_out"] == 0


def export_of(demo: Demo) -> str:
    """An export far bigger than loopback's socket buffers (12-16 MB) that starts within a second.

    PostgreSQL sorts the whole period before the first row: half the history, about 0.7 s.
    """
    first = "2025-01-01" if isinstance(demo.database, PostgresDatabase) else "2024-01-01"
    return f"{demo.url}{EXPORT}?from={first}"


def export_under_way(demo: Demo, curl: Curl) -> None:
    """Wait until curl has a good part of the CSV and, on PostgreSQL, the cursor is open."""
    wait_until(lambda: curl.received() > 128 * 1024, 10, "the first CSV batches arriving")
    if isinstance(demo.database, PostgresDatabase):
        assert busy_backends(demo.database)  # a transaction holds the server-side cursor


def test_export_stops_when_curl_gives_up(fresh: Demo, curl: Start) -> None:
    since = len(fresh.events())
    download = curl(export_of(fresh), "--max-time", "3", "--limit-rate", "200k")
    export_under_way(fresh, download)

    code, left_at = download.finish()

    assert code == 28  # curl's "operation timed out": the export was still streaming
    assert_export_stopped(fresh, since, left_at)


def test_export_stops_when_curl_is_killed_mid_download(fresh: Demo, curl: Start) -> None:
    since = len(fresh.events())
    download = curl(export_of(fresh), "--limit-rate", "200k")
    export_under_way(fresh, download)

    left_at = download.kill()

    assert_export_stopped(fresh, since, left_at)


@pytest.mark.parametrize("how", ["max-time", "killed"])
def test_partial_upload_is_removed_when_curl_stops_mid_upload(
    fresh: Demo, curl: Start, payload: Path, how: str
) -> None:
    options = ["--data-binary", f"@{payload}", "--limit-rate", "2M"]
    if how == "max-time":
        options += ["--max-time", "1.5"]
    upload = curl(fresh.url + "/uploads", *options)

    def partial_written() -> bool:
        return any(part.stat().st_size > 0 for part in fresh.upload_dir.glob("*.part"))

    wait_until(partial_written, 10, "a partial upload on disk")
    if how == "max-time":
        code, left_at = upload.finish()
        assert code == 28  # 12 MiB at 2 MiB/s cannot make it in 1.5 s
    else:
        left_at = upload.kill()

    removed_at = wait_until(
        lambda: not list(fresh.upload_dir.glob("*.part")), 5, "removal of the partial file"
    )
    assert removed_at - left_at < PROMPTLY
    assert not [p for p in fresh.upload_dir.iterdir() if p.stat().st_size == UPLOAD_BYTES]
    assert upload.received() == 0  # no answer was sent to a client that had left
    assert_quiet_abort(fresh, "POST", "/uploads")


def order_count(database: Path | PostgresDatabase, customer_id: int) -> int:
    sql = "SELECT count(*) FROM orders WHERE customer_id = {}"
    if isinstance(database, PostgresDatabase):
        return int(database.query(sql.format("$1"), customer_id)[0]["count"])
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return int(connection.execute(sql.format("?"), (customer_id,)).fetchone()[0])


def stock_of(database: Path | PostgresDatabase, product_id: int) -> int:
    sql = "SELECT quantity FROM stock WHERE product_id = {}"
    if isinstance(database, PostgresDatabase):
        return int(database.query(sql.format("$1"), product_id)[0]["quantity"])
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return int(connection.execute(sql.format("?"), (product_id,)).fetchone()[0])


def test_order_abandoned_by_curl_while_blocked_leaves_no_order(fresh: Demo, curl: Start) -> None:
    customer, product = 4242, 31
    stock_before = stock_of(fresh.database, product)
    since = len(fresh.events())
    body = json.dumps({"customer_id": customer, "items": [{"product_id": product, "quantity": 2}]})

    with held_lock(fresh.database, product) as holder:
        order = curl(fresh.url + "/orders", "--max-time", "1", "--json", body)
        if isinstance(fresh.database, PostgresDatabase):
            database = fresh.database

            def blocked() -> bool:
                rows = busy_backends(database, besides=holder)
                return any("UPDATE stock" in (row["query"] or "") for row in rows)
        else:

            def blocked() -> bool:  # the order's first write waits for SQLite's write lock
                events = fresh.events(since)
                started = named(events, "/orders", "sql.started")
                return len(started) == len(named(events, "/orders", "sql.finished")) + 1 >= 3

        wait_until(blocked, 5, "the order waiting for the lock")
        code, left_at = order.finish()
        assert code == 28
        if isinstance(fresh.database, PostgresDatabase):
            idle_at = wait_until(
                lambda: not busy_backends(database, besides=holder), 5, "the order's backend idle"
            )
            assert idle_at - left_at < PROMPTLY  # cancelled while still blocked
        # SQLite's interrupt cannot break a wait for its lock: it lands when the lock is released.

    assert_quiet_abort(fresh, "POST", "/orders")
    events = fresh.wait_for_event(since, lambda e: bool(named(e, "/orders", "request.finished")))
    assert named(events, "/orders", "request.finished")[0]["outcome"] == "OperationCancelled"
    assert order_count(fresh.database, customer) == 0
    assert stock_of(fresh.database, product) == stock_before
    assert internals(fresh)["db_pool"]["checked_out"] == 0
