"""A client that really goes away: real servers on 127.0.0.1, real sockets, real curl.

Each test closes a connection at one phase of a request and then reads, from the server side, that
the handler's token fired with ``ClientDisconnected`` promptly, that the middleware logged its one
INFO line, and that no traceback reached the server's output. "Promptly" is a functional bound of
one second; the latency itself is measured in bench/, not asserted here.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import httpx
import pytest

from tests._fixtures.servers import ServerProcess

pytestmark = pytest.mark.e2e

Serve = Callable[..., ServerProcess]
HTTP1_SERVERS = [
    pytest.param("uvicorn", "h11", id="uvicorn-h11"),
    pytest.param("uvicorn", "httptools", id="uvicorn-httptools"),
    pytest.param("hypercorn", "h11", id="hypercorn-h11"),
]
PROMPTLY = 1.0


def events_when(server: ServerProcess, ready: Callable[[list[dict[str, Any]]], bool]) -> list[Any]:
    deadline = time.monotonic() + 10
    while True:
        events: list[dict[str, Any]] = httpx.get(f"{server.base_url}/events").json()
        if ready(events):
            return events
        if time.monotonic() > deadline:
            pytest.fail(f"events never became ready: {events}\n{server.log()}")
        time.sleep(0.01)


def has(path: str, event: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: any(e["path"] == path and e["event"] == event for e in events)


def fired(events: list[dict[str, Any]], path: str) -> dict[str, Any]:
    return next(e for e in events if e["path"] == path and e["event"] == "fired")


def assert_quiet_abort(server: ServerProcess, method: str, path: str) -> None:
    server.wait_for_log(rf"INFO request_aborted: {method} {path} aborted after [0-9.]+s: "
                        r"ClientDisconnected.*\(499\)")  # fmt: skip
    output = server.log()
    assert "Traceback" not in output
    assert "Exception in ASGI application" not in output
    assert output.count(f"{method} {path} aborted") == 1


@pytest.mark.parametrize(("server_name", "http"), HTTP1_SERVERS)
def test_socket_closed_while_handler_works_fires_the_token(
    serve: Serve, server_name: str, http: str
) -> None:
    server = serve("tests.e2e.apps.watch:app", server=server_name, http=http)
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
    events_when(server, has("/slow", "started"))

    closed_at = time.monotonic()
    client.close()

    event = fired(events_when(server, has("/slow", "fired")), "/slow")
    assert event["reason"] == "ClientDisconnected"
    assert event["at"] - closed_at < PROMPTLY
    assert_quiet_abort(server, "GET", "/slow")


@pytest.mark.parametrize(("server_name", "http"), HTTP1_SERVERS)
def test_socket_closed_mid_upload_fires_the_token(
    serve: Serve, server_name: str, http: str
) -> None:
    server = serve("tests.e2e.apps.watch:app", server=server_name, http=http)
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 10000000\r\n\r\n")
    client.sendall(b"x" * 1_000_000)
    events_when(server, has("/upload", "started"))

    closed_at = time.monotonic()
    client.close()

    event = fired(events_when(server, has("/upload", "fired")), "/upload")
    assert event["reason"] == "ClientDisconnected"
    assert event["at"] - closed_at < PROMPTLY
    assert_quiet_abort(server, "POST", "/upload")


@pytest.mark.parametrize(("server_name", "http"), HTTP1_SERVERS)
def test_socket_closed_mid_download_fires_the_token(
    serve: Serve, server_name: str, http: str
) -> None:
    server = serve("tests.e2e.apps.watch:app", server=server_name, http=http)
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
    assert client.recv(65536).startswith(b"HTTP/1.1 200")

    closed_at = time.monotonic()
    client.close()

    event = fired(events_when(server, has("/stream", "fired")), "/stream")
    assert event["reason"] == "ClientDisconnected"
    assert event["at"] - closed_at < PROMPTLY
    assert_quiet_abort(server, "GET", "/stream")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize(("server_name", "http"), HTTP1_SERVERS)
def test_curl_max_time_aborts_the_request(serve: Serve, server_name: str, http: str) -> None:
    server = serve("tests.e2e.apps.watch:app", server=server_name, http=http)
    started = time.monotonic()
    curl = subprocess.run(
        ["curl", "--silent", "--max-time", "0.5", f"{server.base_url}/slow"], check=False
    )
    assert curl.returncode == 28  # curl's "operation timed out"

    event = fired(events_when(server, has("/slow", "fired")), "/slow")
    assert event["reason"] == "ClientDisconnected"
    assert event["at"] - started < 0.5 + PROMPTLY
    assert_quiet_abort(server, "GET", "/slow")


def test_http2_stream_reset_fires_the_token_and_keeps_the_connection(serve: Serve) -> None:
    server = serve("tests.e2e.apps.watch:app", server="hypercorn")
    client = socket.create_connection(("127.0.0.1", server.port))
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    request = [(":method", "GET"), (":path", "/slow"), (":scheme", "http"),
               (":authority", "127.0.0.1")]  # fmt: skip
    connection.send_headers(1, request, end_stream=True)
    client.sendall(connection.data_to_send())
    events_when(server, has("/slow", "started"))

    reset_at = time.monotonic()
    connection.reset_stream(1, error_code=h2.errors.ErrorCodes.CANCEL)
    client.sendall(connection.data_to_send())

    event = fired(events_when(server, has("/slow", "fired")), "/slow")
    assert event["reason"] == "ClientDisconnected"
    assert event["at"] - reset_at < PROMPTLY
    assert_quiet_abort(server, "GET", "/slow")
    client.close()


def test_fastapi_app_set_up_as_the_readme_says(serve: Serve) -> None:
    server = serve("tests.e2e.apps.watch_fastapi:app", server="uvicorn", http="httptools")
    curl = subprocess.run(
        ["curl", "--silent", "--max-time", "0.5", f"{server.base_url}/slow"], check=False
    )
    assert curl.returncode == 28

    event = fired(events_when(server, has("/slow", "fired")), "/slow")
    assert event["reason"] == "ClientDisconnected"
    assert_quiet_abort(server, "GET", "/slow")


def test_fastapi_endpoint_timeout_answers_504_problem(serve: Serve) -> None:
    server = serve("tests.e2e.apps.watch_fastapi:app", server="uvicorn", http="h11")

    response = httpx.get(f"{server.base_url}/budget", timeout=5)

    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 504
    server.wait_for_log(r"WARNING request_aborted: GET /budget aborted after 0\.[0-9]+s: "
                        r"RequestTimedOut")  # fmt: skip
    assert "Traceback" not in server.log()
