"""The deployment matrix of docs/deployment.md, kept true: every server we name runs the same app.

For each server and mode: a client that leaves (``curl --max-time 1``) fires the request's token;
a 5 MB upload arrives whole; a request over its 0.5 s budget gets the app's 504; and SIGTERM with
requests in flight runs the two-phase shutdown (the short request finishes with 200, the long one
gets 503 when the 1 s grace ends, the process exits). One process per server serves the first
three checks; the shutdown check starts its own. hypercorn's default mode and daphne, which do not
pass, have tests that pin what they do instead.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests._fixtures.background import in_background
from tests._fixtures.servers import ServerProcess, start_server

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.deployment:app"
GRACE = 1.0
UPLOAD = 5 * 1024 * 1024
HYPERCORN_GRACEFUL_TIMEOUT = 2
PY = sys.executable

# (id, command); {port} is filled in at start. Every command binds 127.0.0.1 only. gunicorn runs
# without its control socket: one fixed path in the home directory for every gunicorn at once.
MATRIX = {
    "uvicorn-h11": [PY, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", "{port}",
                    "--http", "h11", "--lifespan", "on", "--no-access-log"],
    "uvicorn-httptools": [PY, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", "{port}",
                          "--http", "httptools", "--lifespan", "on", "--no-access-log"],
    "uvicorn-workers-2": [PY, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", "{port}",
                          "--workers", "2", "--lifespan", "on", "--no-access-log"],
    "gunicorn-uvicorn-worker": [PY, "-m", "gunicorn", APP, "--bind", "127.0.0.1:{port}",
                                "--worker-class", "uvicorn_worker.UvicornWorker",
                                "--workers", "1", "--graceful-timeout", "10",
                                "--no-control-socket"],
    "gunicorn-asgi": [PY, "-m", "gunicorn", APP, "--bind", "127.0.0.1:{port}",
                      "--worker-class", "asgi", "--workers", "1", "--graceful-timeout", "10",
                      "--no-control-socket"],
    "hypercorn-workers-0": [PY, "-m", "hypercorn", APP, "--bind", "127.0.0.1:{port}",
                            "--workers", "0"],
    "granian-asgi": [PY, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
                     "--port", "{port}", APP],
}  # fmt: skip
SERVERS = list(MATRIX)


def start(name: str, output: Path, **env: str) -> ServerProcess:
    server = start_server(APP, output, command=MATRIX[name],
                          env={"SHUTDOWN_GRACE": str(GRACE), **env})  # fmt: skip
    server.wait_for_log("application started")
    return server


@pytest.fixture(scope="module", params=SERVERS)
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServerProcess]]:
    """One process per server for the checks that leave it running."""
    name: str = request.param
    server = start(name, tmp_path_factory.mktemp(name) / "server.log")
    yield name, server
    server.stop()


def test_a_client_that_leaves_fires_the_token(running: tuple[str, ServerProcess]) -> None:
    _, server = running
    curl = subprocess.run(
        ["curl", "-s", "--max-time", "1", f"{server.base_url}/slow?seconds=31"],
        capture_output=True,
        timeout=10,
    )
    left_at = time.monotonic()
    # The abort line comes last, after the handler's own "finished" line.
    server.wait_for_log(r"GET /slow aborted after .*ClientDisconnected.*\(499\)", timeout=10)
    stopped_after = time.monotonic() - left_at

    assert curl.returncode == 28  # curl's "operation timed out": it left
    assert stopped_after < 5
    assert "finished /slow 31" in server.log()


def test_a_5_mb_upload_arrives_whole(running: tuple[str, ServerProcess]) -> None:
    _, server = running

    response = httpx.post(f"{server.base_url}/upload", content=b"x" * UPLOAD, timeout=30)

    assert response.status_code == 200
    assert response.json() == {"bytes": UPLOAD}


def test_a_request_over_its_budget_gets_the_apps_504(running: tuple[str, ServerProcess]) -> None:
    _, server = running

    response = httpx.get(f"{server.base_url}/timeout", timeout=10)

    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "request timed out after 0.5s"


@pytest.mark.parametrize("name", SERVERS)
def test_sigterm_runs_the_two_phase_shutdown(name: str, tmp_path: Path) -> None:
    server = start(name, tmp_path / "server.log")
    try:
        short = in_background(lambda: httpx.get(f"{server.base_url}/slow?seconds=0.5", timeout=15))
        server.wait_for_log(r"started /slow 0.5\b")
        long = in_background(lambda: httpx.get(f"{server.base_url}/slow?seconds=30", timeout=15))
        server.wait_for_log(r"started /slow 30\b")

        signalled_at = time.monotonic()
        server.signal(signal.SIGTERM)
        short_response, long_response = short(), long()
        exit_code = server.process.wait(GRACE + 10)
        took = time.monotonic() - signalled_at
    finally:
        server.stop()

    output = server.log()
    assert (short_response.status_code, short_response.text) == (200, "slow done")
    assert long_response.status_code == 503, output
    assert long_response.json()["detail"] == "server shutting down"
    assert exit_code in (0, -signal.SIGTERM), output
    assert took < GRACE + 5, output
    assert "grace period over" in output
    assert "Traceback" not in output


# What a new connection to /readyz meets 0.3 s into a 1.5 s drain_delay: uvicorn (alone, with
# workers, under gunicorn) and gunicorn's asgi worker get the signal through Python's signal
# module, which the lifetime defers; hypercorn (asyncio's handler) and granian (Rust's) take it
# themselves and close at once.
DRAIN_PROBE = {
    "uvicorn-h11": 503,
    "uvicorn-httptools": 503,
    "uvicorn-workers-2": 503,
    "gunicorn-uvicorn-worker": 503,
    "gunicorn-asgi": 503,
    "hypercorn-workers-0": "ConnectError",
    "granian-asgi": "ConnectError",
}


@pytest.mark.parametrize("name", SERVERS)
def test_drain_delay_keeps_the_server_accepting_while_readiness_says_503(
    name: str, tmp_path: Path
) -> None:
    server = start(name, tmp_path / "server.log", DRAIN_DELAY="1.5")
    try:
        server.signal(signal.SIGTERM)
        server.wait_for_log("shutdown requested")
        time.sleep(0.3)  # uvicorn notices its exit flag within 0.1 s
        try:
            probe: int | str = httpx.get(f"{server.base_url}/readyz", timeout=5).status_code
        except httpx.TransportError as exc:
            probe = type(exc).__name__
    finally:
        server.stop()  # a second SIGTERM: passed on at once, no need to sit out the delay

    assert probe == DRAIN_PROBE[name], server.log()


# -- the servers that do not pass, pinned ------------------------------------------------------


def test_hypercorn_default_mode_never_starts_phase_one(tmp_path: Path) -> None:
    """One worker *process*: the supervisor gets SIGTERM, the app's lifetime never sees it.

    Nothing happens at the grace period; the lifetime's phase 1 comes only at lifespan shutdown,
    after hypercorn's own drain. What ends that drain depends on the Python version:

    * 3.11: hypercorn's ``--graceful-timeout`` cancels the request in flight (a 500 and an asyncio
      ERROR traceback).
    * 3.12+: ``--graceful-timeout`` is never applied and the request runs to its end (200). Since
      3.12 ``asyncio.Server.wait_closed()`` waits for the open connections, and hypercorn 0.18
      awaits it *before* its ``wait_for(..., graceful_timeout)``: an upstream bug (issue 16).
    """
    command = [PY, "-m", "hypercorn", APP, "--bind", "127.0.0.1:{port}",
               "--graceful-timeout", str(HYPERCORN_GRACEFUL_TIMEOUT)]  # fmt: skip
    server = start_server(APP, tmp_path / "server.log", command=command,
                          env={"SHUTDOWN_GRACE": str(GRACE)})  # fmt: skip
    try:
        server.wait_for_log("application started")
        long = in_background(lambda: httpx.get(f"{server.base_url}/slow?seconds=8", timeout=15))
        server.wait_for_log(r"started /slow 8\b")
        signalled_at = time.monotonic()
        server.signal(signal.SIGTERM)
        outcome = _outcome(long)
        answered_after = time.monotonic() - signalled_at
        server.process.wait(15)
    finally:
        server.stop()

    output = server.log()
    if sys.version_info >= (3, 12):
        assert outcome == 200, output  # ran its full 8 s: --graceful-timeout 2 not applied
        assert answered_after > HYPERCORN_GRACEFUL_TIMEOUT + 3, output
        assert "Traceback" not in output
    else:
        assert outcome == 500, output  # cut by hypercorn, not the lifetime's 503
        assert HYPERCORN_GRACEFUL_TIMEOUT <= answered_after < 8, output
    assert output.index("finished /slow 8") < output.index("shutdown requested"), output


def test_daphne_sends_no_lifespan_events(tmp_path: Path) -> None:
    """The lifetime never starts: readiness says so, and SIGTERM cuts requests with no answer."""
    command = [PY, "-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", APP]
    server = start_server(APP, tmp_path / "server.log", command=command,
                          env={"SHUTDOWN_GRACE": str(GRACE)})  # fmt: skip
    try:
        ready = httpx.get(f"{server.base_url}/readyz", timeout=10)
        long = in_background(lambda: httpx.get(f"{server.base_url}/slow?seconds=30", timeout=15))
        server.wait_for_log(r"started /slow 30\b")
        server.signal(signal.SIGTERM)
        outcome = _outcome(long)
        server.process.wait(15)
    finally:
        server.stop()

    output = server.log()
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert "application started" not in output
    assert outcome == "no response", output
    assert "shutdown requested" not in output


def _outcome(call: Callable[[], httpx.Response]) -> int | str:
    """The status the client got, or "no response" for a connection closed without one."""
    try:
        return call().status_code
    except httpx.RemoteProtocolError:
        return "no response"


@pytest.mark.parametrize("name", ["hypercorn-workers-0", "granian-asgi"])
def test_an_h2c_client_that_leaves_fires_the_token(name: str, tmp_path: Path) -> None:
    server = start(name, tmp_path / "server.log")
    try:
        curl = subprocess.run(
            ["curl", "-s", "--http2-prior-knowledge", "--max-time", "1",
             f"{server.base_url}/slow?seconds=32"],
            capture_output=True,
            timeout=10,
        )  # fmt: skip
        server.wait_for_log(r"GET /slow aborted after .*ClientDisconnected.*\(499\)", timeout=10)
    finally:
        server.stop()

    assert curl.returncode == 28
    assert re.search(r"started /slow 32 pid=\d+ http/2\b", server.log())  # really HTTP/2
