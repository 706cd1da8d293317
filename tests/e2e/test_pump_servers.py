"""Which servers' watched requests get a pump without an asyncio task: a table that must stay true.

``_watcher.TASKLESS_RECEIVES`` names the ``receive()`` implementations read and known never to need
a task of their own; the pump of any other runs as a task. Each server runs here in its own process
on 127.0.0.1 and answers whether its ``receive`` is on that list and how many tasks a watched
request added; then a client that really goes away must still fire the token. A release that moves
its ``receive`` fails here (the pump would quietly be a task again), and so does a server that
starts to match (its ``receive`` must be read before it is trusted).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests._fixtures.servers import ServerProcess, start_server
from tests.e2e.test_server_transports import APP as TRANSPORT_APP
from tests.e2e.test_server_transports import SERVERS as TRANSPORT_SERVERS

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.pump_probe:app"

# Whether the server's receive() is driven by hand; gunicorn's own ASGI worker is not on the list
# (its HTTP/2 receive() calls asyncio.wait_for, which needs a task from Python 3.12 on).
HAND_DRIVEN = {
    "uvicorn-h11": True,
    "uvicorn-httptools": True,
    "gunicorn-uvicorn-worker": True,
    "gunicorn-asgi": False,
    "hypercorn": True,
    "granian": True,
    "daphne": True,
}


@pytest.fixture(scope="module", params=list(HAND_DRIVEN))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServerProcess]]:
    name = str(request.param)
    command = [part.replace(TRANSPORT_APP, APP) for part in TRANSPORT_SERVERS[name][0]]
    output = tmp_path_factory.mktemp("pump") / f"{name}.log"
    running = start_server(APP, output, command=command)
    try:
        yield name, running
    finally:
        running.stop()


def test_a_watched_request_pumps_without_a_task_exactly_where_the_table_says(
    server: tuple[str, ServerProcess],
) -> None:
    name, running = server
    answer = httpx.get(f"{running.base_url}/count", timeout=10).json()
    assert answer["drivable"] is HAND_DRIVEN[name], f"{name}: update TASKLESS_RECEIVES ({answer})"
    assert answer["extra_tasks"] == (0 if HAND_DRIVEN[name] else 1), answer


def test_a_client_that_goes_away_while_the_handler_waits_fires_the_token(
    server: tuple[str, ServerProcess],
) -> None:
    _, running = server
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as client:
        client.sendall(b"GET /wait HTTP/1.1\r\nHost: probe\r\n\r\n")
        time.sleep(0.2)  # the handler is waiting, its pump parked in the server's receive()
    deadline = time.monotonic() + 10
    events: list[str] = []
    while time.monotonic() < deadline:
        events = json.loads(httpx.get(f"{running.base_url}/events", timeout=10).text)
        if events:
            break
        time.sleep(0.05)
    assert events[-1:] == ["ClientDisconnected"], f"{running.log()}"
