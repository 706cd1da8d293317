"""A real ``hypercorn -k trio`` on 127.0.0.1: the middleware under trio, seen from outside.

Every request through the middleware used to be a 500 under trio ("no running event loop"). Here a
real curl gives up (``--max-time``), a real timeout answers 504, and SIGTERM reaches a real
process; the server's own output tells what the app did. "Promptly" is a functional bound of one
second, as in test_disconnects.py.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests._fixtures.servers import ServerProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]

Serve = Callable[..., ServerProcess]
APP = "tests.e2e.apps.trio_app:app"
TRIO = ("-k", "trio")
PROMPTLY = 1.0


def events_when(server: ServerProcess, path: str, event: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        events: list[dict[str, Any]] = httpx.get(f"{server.base_url}/events").json()
        if any(e["path"] == path and e["event"] == event for e in events):
            return events
        if time.monotonic() > deadline:
            pytest.fail(f"no {event} for {path}: {events}\n{server.log()}")
        time.sleep(0.01)


def fired(events: list[dict[str, Any]], path: str) -> dict[str, Any]:
    return next(e for e in events if e["path"] == path and e["event"] == "fired")


def assert_no_error_output(server: ServerProcess) -> None:
    output = server.log()
    assert "Traceback" not in output, output
    assert "ERROR" not in output, output
    assert "no running event loop" not in output, output


def test_the_app_really_runs_under_trio(serve: Serve) -> None:
    server = serve(APP, server="hypercorn", extra=TRIO)
    response = httpx.get(f"{server.base_url}/backend")
    assert (response.status_code, response.text) == (200, "trio")


def test_curl_max_time_under_hypercorn_trio_fires_the_token_and_logs_one_499_line(
    serve: Serve,
) -> None:
    server = serve(APP, server="hypercorn", extra=TRIO)
    started = time.monotonic()
    curl = subprocess.run(
        ["curl", "--silent", "--max-time", "0.5", f"{server.base_url}/slow"], check=False
    )
    assert curl.returncode == 28  # curl's "operation timed out"

    event = fired(events_when(server, "/slow", "fired"), "/slow")
    assert event["reason"] == "ClientDisconnected"
    assert event["at"] - started < 0.5 + PROMPTLY
    server.wait_for_log(r"INFO request_aborted: GET /slow aborted after [0-9.]+s: "
                        r"ClientDisconnected.*\(499\)")  # fmt: skip
    server.wait_for_log("slow cleanup finished")
    assert server.log().count("GET /slow aborted") == 1
    assert_no_error_output(server)


def test_socket_closed_mid_upload_under_hypercorn_trio_fires_the_token(serve: Serve) -> None:
    server = serve(APP, server="hypercorn", extra=TRIO)
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 10000000\r\n\r\n")
    client.sendall(b"x" * 1_000_000)
    events_when(server, "/upload", "started")

    closed_at = time.monotonic()
    client.close()

    event = fired(events_when(server, "/upload", "fired"), "/upload")
    assert event["reason"] == "ClientDisconnected"
    assert event["at"] - closed_at < PROMPTLY
    assert_one_quiet_499(server, "POST", "/upload")


def test_socket_closed_mid_download_under_hypercorn_trio_fires_the_token(serve: Serve) -> None:
    server = serve(APP, server="hypercorn", extra=TRIO)
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
    assert client.recv(65536).startswith(b"HTTP/1.1 200")

    closed_at = time.monotonic()
    client.close()

    event = fired(events_when(server, "/stream", "fired"), "/stream")
    assert event["reason"] == "ClientDisconnected"
    assert event["at"] - closed_at < PROMPTLY
    assert_one_quiet_499(server, "GET", "/stream")


def assert_one_quiet_499(server: ServerProcess, method: str, path: str) -> None:
    server.wait_for_log(rf"INFO request_aborted: {method} {path} aborted after [0-9.]+s: "
                        r"ClientDisconnected.*\(499\)")  # fmt: skip
    assert server.log().count(f"{method} {path} aborted") == 1
    assert_no_error_output(server)


def test_a_request_timeout_under_hypercorn_trio_answers_504(serve: Serve) -> None:
    server = serve(APP, server="hypercorn", extra=TRIO)
    response = httpx.get(f"{server.base_url}/timeout", timeout=10)
    assert response.status_code == 504
    assert response.json()["status"] == 504
    event = fired(events_when(server, "/timeout", "fired"), "/timeout")
    assert event["reason"] == "RequestTimedOut"
    server.wait_for_log(r"WARNING request_aborted: GET /timeout aborted after [0-9.]+s: "
                        r"RequestTimedOut.*\(504\)")  # fmt: skip
    assert_no_error_output(server)


def test_sigterm_under_hypercorn_trio_runs_the_lifetime_to_the_end(serve: Serve) -> None:
    """hypercorn's trio worker hears of SIGTERM only from its supervisor, and runs lifespan
    shutdown after its drain: the lifetime's phases then run at once, services stop with their
    token, and the process exits cleanly. (Its ``--workers 0`` process handles no signal at all,
    so two-phase shutdown on SIGTERM is not on offer from hypercorn -k trio; see
    docs/hazards.md.)"""
    server = serve(APP, server="hypercorn", extra=TRIO)
    server.wait_for_log("ticker running under trio")
    assert httpx.get(f"{server.base_url}/backend").status_code == 200

    server.signal(signal.SIGTERM)
    exit_code = server.process.wait(15)

    assert exit_code == 0
    output = server.log()
    phases = ["shutdown requested", "ticker stopped: ServerShuttingDown", "application stopped"]
    positions = [output.index(phase) for phase in phases]
    assert positions == sorted(positions), output
    assert_no_error_output(server)
