"""Which servers let ``_servers`` reach a request's connection: a table that must stay true.

The minimum-rate cut aborts a too-slow client's connection where the server's own objects lead to
its transport (uvicorn's request cycle, gunicorn's protocol), and falls back to cancelling the
blocked ``send()`` elsewhere. Nothing in those servers promises the shape we read, so each server
runs here in its own process on 127.0.0.1 and answers, for a bare ASGI app and under Starlette,
whether the transport was found and whose connection it is. A release that stops matching fails
here (the fast path would be lost quietly), and so does one that starts to (a server we never
checked would have its connections aborted).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest

from tests._fixtures.servers import ServerProcess, start_server

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.transport_probe:app"
PY = sys.executable

# (command, whether the connection's transport is found); {port} is filled in at start.
SERVERS = {
    "uvicorn-h11": ([PY, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", "{port}",
                     "--http", "h11", "--no-access-log"], True),
    "uvicorn-httptools": ([PY, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", "{port}",
                           "--http", "httptools", "--no-access-log"], True),
    "gunicorn-uvicorn-worker": ([PY, "-m", "gunicorn", APP, "--bind", "127.0.0.1:{port}",
                                 "--worker-class", "uvicorn_worker.UvicornWorker",
                                 "--workers", "1", "--no-control-socket"], True),
    "gunicorn-asgi": ([PY, "-m", "gunicorn", APP, "--bind", "127.0.0.1:{port}",
                       "--worker-class", "asgi", "--workers", "1", "--no-control-socket"], True),
    "hypercorn": ([PY, "-m", "hypercorn", APP, "--bind", "127.0.0.1:{port}"], False),
    "granian": ([PY, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
                 "--port", "{port}", APP], False),
    "daphne": ([PY, "-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", APP], False),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(SERVERS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServerProcess]]:
    name = str(request.param)
    command, _ = SERVERS[name]
    output = tmp_path_factory.mktemp("transports") / f"{name}.log"
    running = start_server(APP, output, command=command)
    try:
        yield name, running
    finally:
        running.stop()


def probe(port: int, path: str) -> tuple[str, str]:
    """The probe's answer, and the client's own address as the server should see it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk
        host, client_port = client.getsockname()[:2]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    return body.decode(), f"{host}:{client_port}"


@pytest.mark.parametrize("path", ["/", "/starlette/"])
def test_the_connection_is_reached_exactly_where_the_table_says(
    server: tuple[str, ServerProcess], path: str
) -> None:
    name, running = server
    found, client = probe(running.port, path)
    if SERVERS[name][1]:
        assert found == client, f"{name} ({path}) no longer leads to its connection: {found}"
    else:
        assert found == "missing", f"{name} ({path}) now leads to a connection: update _servers"
