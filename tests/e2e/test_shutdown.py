"""SIGTERM with work in flight: two-phase graceful shutdown under real uvicorn and hypercorn.

Phase 1 fires ``stopping`` at once (background services stop, requests may finish); phase 2, after
the grace period, aborts what is still running with ``ServerShuttingDown`` so every client gets a
clear answer (a 503, or a streamed response visibly cut: its chunked body never ends), and the
server exits normally within grace + 1 s.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import httpx
import pytest

from tests._fixtures.background import in_background
from tests._fixtures.servers import ServerProcess

pytestmark = pytest.mark.e2e

Serve = Callable[..., ServerProcess]
GRACE = 1.0
# hypercorn's default runs the app in a worker process that never sees the signal (its supervisor
# does, and tells the worker only through lifespan shutdown); --workers 0 keeps one process.
SERVERS = [
    pytest.param("uvicorn", "httptools", (), id="uvicorn"),
    pytest.param("hypercorn", "h11", ("--workers", "0"), id="hypercorn"),
]


def stream_export(url: str) -> tuple[int, bytes, str]:
    """The status, the rows that arrived, and how the body ended ("" when it ended whole)."""
    body = bytearray()
    with httpx.stream("GET", url, timeout=15) as response:
        try:
            for chunk in response.iter_bytes():
                body += chunk
        except httpx.RemoteProtocolError as exc:
            return response.status_code, bytes(body), str(exc)
    return response.status_code, bytes(body), ""


@pytest.mark.parametrize(("server_name", "http", "extra"), SERVERS)
def test_sigterm_with_requests_in_flight_ends_every_one_cleanly(
    serve: Serve, server_name: str, http: str, extra: tuple[str, ...]
) -> None:
    server = serve("tests.e2e.apps.shutdown:app", server=server_name, http=http, extra=extra,
                   env={"SHUTDOWN_GRACE": str(GRACE)})  # fmt: skip
    server.wait_for_log("ticker running")
    quick = in_background(lambda: httpx.get(f"{server.base_url}/quick", timeout=15))
    report = in_background(lambda: httpx.get(f"{server.base_url}/report", timeout=15))
    export = in_background(lambda: stream_export(f"{server.base_url}/export"))
    for path in ("/quick", "/report", "/export"):
        server.wait_for_log(f"started {path}")

    signalled_at = time.monotonic()
    server.signal(signal.SIGTERM)

    quick_response = quick()
    report_response = report()
    export_status, export_body, export_end = export()
    exit_code = server.process.wait(GRACE + 5)
    shutdown_took = time.monotonic() - signalled_at

    assert quick_response.status_code == 200
    assert quick_response.text == "quick done"
    assert report_response.status_code == 503
    assert report_response.headers["connection"] == "close"
    assert report_response.json()["status"] == 503
    assert export_status == 200
    assert export_body.startswith(b"row 0\n")
    assert b"row 999" not in export_body
    assert "incomplete chunked read" in export_end  # cut, so it cannot pass for a whole export
    assert exit_code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it captured
    assert shutdown_took < GRACE + 1

    output = server.log()
    phases = ["shutdown requested", "ticker stopped: ", "grace period over",
              "report cleanup finished", "application stopped"]  # fmt: skip
    positions = [output.index(phase) for phase in phases]
    assert positions == sorted(positions), output
    assert "GET /report aborted after" in output
    assert "ServerShuttingDown" in output
    assert "ERROR" not in output
    assert "Traceback" not in output


def test_background_service_ignoring_its_token_is_named_and_cancelled(serve: Serve) -> None:
    server = serve("tests.e2e.apps.shutdown:app", server="uvicorn", http="h11",
                   env={"SHUTDOWN_GRACE": str(GRACE), "STUBBORN": "1"})  # fmt: skip
    server.wait_for_log("ticker running")

    server.signal(signal.SIGTERM)
    server.process.wait(10)

    output = server.log()
    assert "background service Stubborn ignored its stopping token for 0.5s" in output
    assert "application stopped" in output
    assert "Traceback" not in output


def test_sigterm_with_nothing_in_flight_exits_at_once(serve: Serve) -> None:
    server = serve("tests.e2e.apps.shutdown:app", server="hypercorn", extra=("--workers", "0"),
                   env={"SHUTDOWN_GRACE": "30"})  # fmt: skip
    server.wait_for_log("ticker running")

    signalled_at = time.monotonic()
    server.signal(signal.SIGTERM)
    exit_code = server.process.wait(10)

    assert exit_code == 0
    assert time.monotonic() - signalled_at < 3  # no request waited for: the grace is not spent
    assert "application stopped" in server.log()
