"""The production topology: curl -> nginx -> uvicorn -> the demo -> PostgreSQL.

A client's abort reaches the app only through the proxy: nginx closes its upstream connection
when its client goes away (``proxy_ignore_client_abort off``, the default) and logs 499. These
tests give up on the same requests as ``test_demo_curl.py``, through a real nginx with buffering on
and off, and check in ``pg_stat_activity`` and on disk that the work still stops. Two settings
from docs/deployment.md are shown to matter: a ``proxy_read_timeout`` shorter than the app's own
budget ends the work like a client leaving, and ``proxy_ignore_client_abort on`` hides every abort.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests._fixtures import nginx as nginx_fixture
from tests._fixtures.nginx import Proxy
from tests._fixtures.postgres import PostgresDatabase, PostgresServer
from tests.demo._support import PROMPTLY, Demo, assert_quiet_abort, named, wait_until

from ._demo import Curl, busy_backends, curls, internals, postgres_copy, running_demo

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

Start = Callable[..., Curl]
REPORT = "/reports/sales"
WHOLE_HISTORY = "?from=2024-01-01&to=2025-12-31"  # about 5 s of PostgreSQL work
EXPORT = "/reports/sales/export?from=2025-01-01"  # 16 MB of CSV, after a sort of 0.7 s
UPLOAD_BYTES = 12 * 1024 * 1024
BUFFERING = pytest.mark.parametrize("buffering", [True, False], ids=["buffered", "unbuffered"])


@pytest.fixture(scope="module")
def demo(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    directory = tmp_path_factory.mktemp("proxied-demo")
    with postgres_copy(postgres) as database, running_demo(directory, database) as running:
        yield running


@pytest.fixture
def fresh(demo: Demo) -> Demo:
    demo.mark_log()
    database: PostgresDatabase = demo.database
    wait_until(lambda: not busy_backends(database), 30, "the previous test's work finishing")
    return demo


@pytest.fixture
def curl(tmp_path: Path) -> Iterator[Start]:
    with curls(tmp_path) as start:
        yield start


def report_running(database: PostgresDatabase) -> bool:
    return any("row_number" in (row["query"] or "") for row in busy_backends(database))


def proxy_logged(proxy: Proxy, request: str, status: int) -> None:
    wait_until(lambda: f'"{request} HTTP/1.1" {status}' in proxy.access_log(), 5,
               f"nginx logging {status} for {request}")  # fmt: skip


@BUFFERING
def test_report_query_stops_when_curl_gives_up_through_nginx(
    fresh: Demo, nginx: Callable[..., Proxy], curl: Start, buffering: bool
) -> None:
    database: PostgresDatabase = fresh.database
    proxy = nginx(fresh.port, buffering=buffering)
    client = curl(proxy.base_url + REPORT + WHOLE_HISTORY, "--max-time", "1")
    wait_until(lambda: report_running(database), 5, "the report's query running")

    code, left_at = client.finish()

    assert code == 28
    idle_at = wait_until(lambda: not busy_backends(database), 5, "the report's backend idle")
    assert idle_at - left_at < PROMPTLY  # nginx passed the abort on at once
    assert_quiet_abort(fresh, "GET", REPORT)
    proxy_logged(proxy, f"GET {REPORT}{WHOLE_HISTORY}", 499)


@BUFFERING
def test_export_stops_when_curl_is_killed_behind_nginx(
    fresh: Demo, nginx: Callable[..., Proxy], curl: Start, buffering: bool
) -> None:
    database: PostgresDatabase = fresh.database
    since = len(fresh.events())
    proxy = nginx(fresh.port, buffering=buffering)
    client = curl(proxy.base_url + EXPORT, "--limit-rate", "200k")
    wait_until(lambda: client.received() > 128 * 1024, 10, "the first CSV batches arriving")

    left_at = client.kill()

    # Buffered, nginx reads ahead of its client into memory and temporary files; either way it
    # hangs up on the app as soon as its own client is gone.
    idle_at = wait_until(lambda: not busy_backends(database), 5, "the export's backend idle")
    assert idle_at - left_at < PROMPTLY
    events = fresh.wait_for_event(
        since, lambda e: bool(named(e, "/reports/sales/export", "request.finished"))
    )
    assert named(events, "/reports/sales/export", "request.finished")[0]["outcome"] == (
        "OperationCancelled"
    )
    assert_quiet_abort(fresh, "GET", "/reports/sales/export")
    assert internals(fresh)["db_pool"]["checked_out"] == 0


@BUFFERING
def test_upload_killed_behind_nginx_leaves_no_file(
    fresh: Demo,
    nginx: Callable[..., Proxy],
    curl: Start,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    buffering: bool,
) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"u" * UPLOAD_BYTES)
    started_before = internals(fresh)["requests"]["started"]
    with_directive(monkeypatch, "client_max_body_size 64m;")  # nginx's default is 1m: a 413
    proxy = nginx(fresh.port, buffering=buffering)
    client = curl(proxy.base_url + "/uploads", "--data-binary", f"@{payload}",
                  "--limit-rate", "2M")  # fmt: skip
    if buffering:
        # proxy_request_buffering on: nginx takes the whole body before it calls the app, so a
        # client that leaves half-way never reaches the app at all.
        time.sleep(1.0)  # about 2 MiB sent, into nginx's temporary file
        client.kill()
        proxy_logged(proxy, "POST /uploads", 400)  # "client prematurely closed connection"
        assert internals(fresh)["requests"]["started"] == started_before
        assert not fresh.upload_dir.exists() or not list(fresh.upload_dir.iterdir())
        return

    def partial_written() -> bool:
        return any(part.stat().st_size > 0 for part in fresh.upload_dir.glob("*.part"))

    wait_until(partial_written, 10, "a partial upload on disk")
    left_at = client.kill()

    removed_at = wait_until(
        lambda: not list(fresh.upload_dir.glob("*.part")), 5, "removal of the partial file"
    )
    assert removed_at - left_at < PROMPTLY
    assert not list(fresh.upload_dir.iterdir())
    assert_quiet_abort(fresh, "POST", "/uploads")


def test_proxy_read_timeout_below_the_apps_budget_ends_the_work_like_a_client_leaving(
    fresh: Demo,
    nginx: Callable[..., Proxy],
    curl: Start,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database: PostgresDatabase = fresh.database
    with_directive(monkeypatch, "proxy_read_timeout 1s;")
    proxy = nginx(fresh.port)
    client = curl(proxy.base_url + REPORT + WHOLE_HISTORY)
    wait_until(lambda: report_running(database), 5, "the report's query running")

    code, answered_at = client.finish()

    assert code == 0  # curl got an answer: nginx's own 504
    proxy_logged(proxy, f"GET {REPORT}{WHOLE_HISTORY}", 504)
    idle_at = wait_until(lambda: not busy_backends(database), 5, "the report's backend idle")
    assert idle_at - answered_at < PROMPTLY
    # To the app, a proxy that gives up is a client that left: 499 in its log, not a 504.
    assert_quiet_abort(fresh, "GET", REPORT)


def test_proxy_ignore_client_abort_on_hides_the_abort_from_the_app(
    fresh: Demo,
    nginx: Callable[..., Proxy],
    curl: Start,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The setting docs/deployment.md warns about: nginx keeps the upstream request running."""
    database: PostgresDatabase = fresh.database
    since = len(fresh.events())
    with_directive(monkeypatch, "proxy_ignore_client_abort on;")
    proxy = nginx(fresh.port)
    client = curl(proxy.base_url + REPORT + WHOLE_HISTORY, "--max-time", "0.5")
    wait_until(lambda: report_running(database), 5, "the report's query running")

    code, left_at = client.finish()

    assert code == 28
    events = fresh.wait_for_event(  # the whole report runs to its end: 14 s seen under load
        since, lambda e: bool(named(e, REPORT, "request.finished")), timeout=90
    )
    assert not named(events, REPORT, "sql.failed")  # nothing was interrupted...
    assert named(events, REPORT, "sql.finished")[-1]["at"] > left_at  # ...the query ran on
    (finished,) = named(events, REPORT, "request.finished")
    assert finished["outcome"] == "returned"  # to its end, and was answered to nobody
    assert "aborted after" not in fresh.log()


def with_directive(monkeypatch: pytest.MonkeyPatch, directive: str) -> None:
    """Add ``directive`` to the ``location`` block of the nginx the fixture starts next."""
    config = nginx_fixture.CONFIG.replace(
        "proxy_http_version 1.1;", f"proxy_http_version 1.1;\n            {directive}"
    )
    assert config != nginx_fixture.CONFIG
    monkeypatch.setattr(nginx_fixture, "CONFIG", config)
