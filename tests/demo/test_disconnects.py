"""A client that leaves mid-request, and the proof, read on the server side, that work stopped.

For each endpoint a real client goes away at the worst moment - mid-query, mid-stream,
mid-upload, mid-transaction, mid-upstream-call - and the test checks what the server did about
it: the statement failed (interrupted) within ``PROMPTLY`` of the close, the process stopped
burning CPU, the upstream logged its own abort, the partial file is gone, no order row exists.
And each time the server printed the library's one INFO line and no traceback.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable

import psutil  # type: ignore[import-untyped]
import pytest

from tests._fixtures.servers import ServerProcess

from ._support import (
    PROMPTLY,
    Demo,
    assert_no_traceback,
    assert_quiet_abort,
    named,
    open_request,
    wait_until,
)
from .conftest import StartDemo

Serve = Callable[..., ServerProcess]

pytestmark = pytest.mark.e2e


def cpu_seconds(demo: Demo) -> float:
    times = psutil.Process(demo.server.process.pid).cpu_times()
    return float(times.user + times.system)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_report_query_stops_when_curl_gives_up(demo_log: Demo) -> None:
    since = len(demo_log.events())

    curl = subprocess.run(
        ["curl", "--silent", "--max-time", "1", f"{demo_log.url}/reports/sales"], check=False
    )
    left_at = time.monotonic()

    assert curl.returncode == 28  # curl's "operation timed out": the report takes seconds
    events = demo_log.wait_for_event(
        since, lambda e: bool(named(e, "/reports/sales", "request.finished"))
    )
    # The report's big statement was interrupted in SQLite, not left to run to the end.
    (failed,) = named(events, "/reports/sales", "sql.failed")
    assert failed["at"] - left_at < PROMPTLY
    assert not named(events, "/reports/sales", "sql.finished")[1:]  # only the date-range query
    (aborted,) = named(events, "/reports/sales", "request.aborted")
    assert aborted["reason"] == "ClientDisconnected"
    assert_quiet_abort(demo_log, "GET", "/reports/sales")

    # And the process is idle again: no query is still grinding in aiosqlite's thread.
    before = cpu_seconds(demo_log)
    time.sleep(0.5)
    assert cpu_seconds(demo_log) - before < 0.15

    metrics = demo_log.get("/metrics").text
    assert 'demo_requests_aborted_total{reason="ClientDisconnected",route="/reports/{name}"}' in (
        metrics
    )


def test_export_stops_reading_the_cursor_when_the_client_leaves(demo_log: Demo) -> None:
    since = len(demo_log.events())
    client = open_request(demo_log.port, "GET", "/reports/sales/export?from=2024-01-01")
    received = b""
    while len(received) < 256 * 1024:  # a few batches in: the stream is well under way
        chunk = client.recv(65536)
        assert chunk, f"the export ended after {len(received)} bytes: {received[:500]!r}"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200")

    client.close()
    left_at = time.monotonic()

    events = demo_log.wait_for_event(
        since, lambda e: bool(named(e, "/reports/sales/export", "request.finished"))
    )
    (finished,) = named(events, "/reports/sales/export", "request.finished")
    assert finished["at"] - left_at < PROMPTLY
    # The token refuses the next fetch (OperationCancelled), or Starlette's StreamingResponse hears
    # the same disconnect and ends the stream (returned): a race, both prompt; the 499 line shows
    # the client left mid-stream.
    assert finished["outcome"] in ("OperationCancelled", "returned")
    assert_quiet_abort(demo_log, "GET", "/reports/sales/export")
    assert demo_log.get("/healthz").json()["pool"]["in_use"] == 0  # cursor and session released


def test_partial_upload_is_removed_when_the_client_leaves(demo_log: Demo) -> None:
    client = open_request(
        demo_log.port, "POST", "/uploads", headers={"Content-Length": str(12 * 1024 * 1024)}
    )
    client.sendall(b"u" * (2 * 1024 * 1024))

    def partial_written() -> bool:
        return any(p.stat().st_size > 0 for p in demo_log.upload_dir.glob("*.part"))

    wait_until(partial_written, 10, "a partial upload on disk")

    client.close()
    left_at = time.monotonic()

    removed_at = wait_until(
        lambda: not list(demo_log.upload_dir.glob("*.part")), 5, "removal of the partial file"
    )
    assert removed_at - left_at < 1.0
    assert_quiet_abort(demo_log, "POST", "/uploads")


def test_order_cancelled_before_commit_leaves_nothing_behind(
    demo_log: Demo, shop_db: sqlite3.Connection
) -> None:
    (stock_before,) = shop_db.execute("SELECT quantity FROM stock WHERE product_id = 17").fetchone()
    since = len(demo_log.events())
    # Another writer holds SQLite's write lock, so the order's INSERT waits for it.
    shop_db.execute("BEGIN IMMEDIATE")
    try:
        body = json.dumps({"customer_id": 42, "items": [{"product_id": 17, "quantity": 1}]})
        client = open_request(
            demo_log.port, "POST", "/orders", body=body.encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip

        def waiting_for_the_lock() -> bool:
            events = demo_log.events(since)
            started = named(events, "/orders", "sql.started")
            return len(started) == len(named(events, "/orders", "sql.finished")) + 1 >= 3

        wait_until(waiting_for_the_lock, 10, "the order's INSERT waiting for the lock")
        time.sleep(0.2)
        client.close()
        # SQLite's interrupt cannot break a busy-wait for a lock; it lands once the lock is free.
        # What matters is the outcome: the transaction is rolled back, not committed.
        time.sleep(0.3)
    finally:
        shop_db.execute("ROLLBACK")

    assert_quiet_abort(demo_log, "POST", "/orders")
    events = demo_log.events(since)
    assert named(events, "/orders", "request.finished")[0]["outcome"] == "OperationCancelled"
    assert shop_db.execute("SELECT count(*) FROM orders WHERE customer_id = 42").fetchone() == (0,)
    (stock_after,) = shop_db.execute("SELECT quantity FROM stock WHERE product_id = 17").fetchone()
    assert stock_after == stock_before


def test_order_body_cut_short_is_a_quiet_abort(demo_log: Demo) -> None:
    client = open_request(
        demo_log.port, "POST", "/orders", headers={"Content-Length": "1000"}, body=b'{"cust'
    )
    time.sleep(0.2)  # the handler is waiting for the rest of the JSON

    client.close()

    assert_quiet_abort(demo_log, "POST", "/orders")


def test_search_call_to_the_upstream_is_cancelled_across_the_process_boundary(
    start_demo: StartDemo, serve: Serve
) -> None:
    upstream = serve(
        "app.upstream.main:app", server="uvicorn", http="httptools",
        env={"RECOMMENDER_LATENCY_MS": "5000"},
    )  # fmt: skip
    demo = start_demo(RECOMMENDER_URL=upstream.base_url, RECOMMENDATIONS_TIMEOUT="10")
    client = open_request(demo.port, "GET", "/search?q=lamp")
    demo.wait_for_event(0, lambda e: bool(named(e, "/search", "sql.finished")))
    upstream.wait_for_log(r"request_aborted|Application startup complete")
    time.sleep(0.3)  # the products are found; the upstream is thinking

    client.close()
    left_at = time.monotonic()

    assert_quiet_abort(demo, "GET", "/search")
    upstream.wait_for_log(
        r"INFO: +request_aborted: GET /recommendations aborted after [0-9.]+s: "
        r"ClientDisconnected.*\(499\)"
    )
    # Not left to think: it had 4.7 s to go. 2.5 s leaves room for a loaded machine.
    assert time.monotonic() - left_at < 2.5
    assert_no_traceback(upstream.log())


def test_search_answers_without_recommendations_when_the_upstream_is_slow(
    start_demo: StartDemo, serve: Serve
) -> None:
    upstream = serve(
        "app.upstream.main:app", server="uvicorn", http="httptools",
        env={"RECOMMENDER_LATENCY_MS": "5000"},
    )  # fmt: skip
    demo = start_demo(RECOMMENDER_URL=upstream.base_url, RECOMMENDATIONS_TIMEOUT="0.3")

    started = time.monotonic()
    body = demo.get("/search", params={"q": "lamp"}).json()

    assert time.monotonic() - started < 3.5  # the 0.3 s budget, not the upstream's 5 s (+ room)
    assert body["products"] and body["recommendations"] is None
    assert body["recommendations_missing"] == "timeout"
    # The linked budget ended the upstream call, and the upstream stopped thinking too: it saw
    # the demo hang up, or its own copy of the budget (the x-request-timeout-ms header) ran out.
    upstream.wait_for_log(
        r"GET /recommendations aborted after 0\.[0-9]+s: (ClientDisconnected|RequestTimedOut)"
    )
    assert 'recommendation_fallbacks_total{reason="timeout"} 1.0' in demo.get("/metrics").text
    assert_no_traceback(demo.log())


def test_report_over_its_budget_is_a_504_problem(start_demo: StartDemo) -> None:
    demo = start_demo(REPORT_TIMEOUT="0.5")

    response = demo.get("/reports/sales")

    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
    assert "request timed out after 0.5s (policy 'reports')" in response.json()["detail"]
    demo.wait_for_log(r"WARNING: +request_aborted: GET /reports/sales aborted after 0\.[0-9]+s: "
                      r"RequestTimedOut")  # fmt: skip
    assert_no_traceback(demo.log())


@pytest.mark.timeout(300)  # the full report, on a loaded machine: minutes, not the default 60 s
def test_benchmark_mode_ignores_the_client_and_runs_the_query_to_the_end(
    start_demo: StartDemo,
) -> None:
    """``HONOR_CANCELLATION=0``: the contrast that shows what the token saves.

    The report's own timeouts are off: on a loaded machine the full report can outrun its 30 s
    policy, and that 504 is not what this test is about (the client leaving is).
    """
    demo = start_demo(HONOR_CANCELLATION="0", REPORT_TIMEOUT="0", REQUEST_TIMEOUT="0")
    curl = subprocess.run(
        ["curl", "--silent", "--max-time", "1", f"{demo.url}/reports/sales"], check=False
    )
    assert curl.returncode == 28

    events = demo.wait_for_event(
        0, lambda e: bool(named(e, "/reports/sales", "request.finished")), timeout=240
    )
    assert not named(events, "/reports/sales", "sql.failed")
    assert len(named(events, "/reports/sales", "sql.finished")) == 2  # the report ran in full
    assert "aborted after" not in demo.log()  # the middleware never heard the client leave
