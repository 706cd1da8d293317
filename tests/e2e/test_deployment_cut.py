"""A response cut after its headers looks cut on every server we name, and is logged once.

When a request's timeout or the server's shutdown comes after the response started, the
middleware sends no final body message and closes the connection (``request_aborted._cut``): a
chunked response gets no terminating chunk, so curl reports ``(18) transfer closed with
outstanding read data remaining`` instead of exiting 0 as for a whole response. The server logs
our one line per request and no ERROR: uvicorn and gunicorn would log "returned without completing
the response" if the app returned before the connection was closed. ``/stream`` in
``tests/e2e/apps/deployment.py`` sends a line every 50 ms; ``/stream-timeout`` has a 0.5 s budget.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests._fixtures.servers import ServerProcess, start_server
from tests.e2e.test_deployment import APP, GRACE, PY, SERVERS, start

pytestmark = pytest.mark.e2e

CUT = "(18) transfer closed with outstanding read data remaining"
TIMED_OUT = r"GET /stream-timeout aborted after [0-9.]+s: RequestTimedOut.*\(504\)"
SHUT_DOWN = r"GET /stream aborted after [0-9.]+s: ServerShuttingDown.*\(503\)"


def curl(server: ServerProcess, path: str, *options: str) -> list[str]:
    return ["curl", "-sS", "--max-time", "10", *options, f"{server.base_url}{path}"]


def assert_cut(result: subprocess.CompletedProcess[bytes] | tuple[int, bytes, bytes]) -> None:
    code, out, err = (
        result if isinstance(result, tuple) else (result.returncode, result.stdout, result.stderr)
    )
    assert code == 18, err
    assert CUT in err.decode()
    assert out.startswith(b"line 0\nline 1\n")  # what was sent before the cut arrived whole


def assert_our_lines_only(output: str, *patterns: str) -> None:
    for pattern in patterns:
        assert len(re.findall(pattern, output)) == 1, output
    assert "Traceback" not in output
    assert [line for line in output.splitlines() if "ERROR" in line] == []


@pytest.mark.parametrize("name", SERVERS)
def test_a_stream_cut_by_its_timeout_or_by_shutdown_looks_cut(name: str, tmp_path: Path) -> None:
    server = start(name, tmp_path / "server.log")
    try:
        timed_out = subprocess.run(curl(server, "/stream-timeout"), capture_output=True, timeout=20)
        streaming = subprocess.Popen(
            curl(server, "/stream"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        server.wait_for_log(r"(?m)started /stream$")
        server.signal(signal.SIGTERM)
        out, err = streaming.communicate(timeout=GRACE + 15)
        server.process.wait(GRACE + 10)  # all output is in: nothing can be logged later
    finally:
        server.stop()

    assert_cut(timed_out)
    assert_cut((streaming.returncode, out, err))
    assert_our_lines_only(server.log(), TIMED_OUT, SHUT_DOWN)


# hypercorn -k trio (no SIGTERM handling with --workers 0: docs/hazards.md row 24) and daphne
# (no lifespan, so no lifetime) for the timeout alone; HTTP/2 over cleartext where served.
OTHERS = {
    "hypercorn-trio": ([PY, "-m", "hypercorn", "-k", "trio", "--workers", "0", APP,
                        "--bind", "127.0.0.1:{port}"], ()),
    "daphne": ([PY, "-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", APP], ()),
    "granian-h2c": ([PY, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
                     "--port", "{port}", APP], ("--http2-prior-knowledge",)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(OTHERS))
def test_a_stream_cut_by_its_timeout_looks_cut(name: str, tmp_path: Path) -> None:
    command, options = OTHERS[name]
    server = start_server(APP, tmp_path / "server.log", command=command)
    try:
        timed_out = subprocess.run(
            curl(server, "/stream-timeout", *options), capture_output=True, timeout=20
        )
    finally:
        server.stop()

    if options:  # HTTP/2: granian resets the stream, "HTTP/2 stream 1 was not closed cleanly"
        assert timed_out.returncode == 92, timed_out.stderr
        assert timed_out.stdout.startswith(b"line 0\nline 1\n")
    else:
        assert_cut(timed_out)
    assert_our_lines_only(server.log(), TIMED_OUT)


def test_hypercorn_h2c_leaves_a_cut_stream_open(tmp_path: Path) -> None:
    """Pinned upstream limit: hypercorn 0.18 drops an HTTP/2 stream whose app returned mid-response
    without resetting or ending it, so the client waits for its own timeout (curl 28) and the
    stream keeps one of the connection's concurrent-stream slots until the connection closes."""
    server = start("hypercorn-workers-0", tmp_path / "server.log")
    try:
        timed_out = subprocess.run(
            ["curl", "-sS", "--http2-prior-knowledge", "--max-time", "2",
             f"{server.base_url}/stream-timeout"],
            capture_output=True,
            timeout=20,
        )  # fmt: skip
    finally:
        server.stop()

    assert timed_out.returncode == 28, timed_out.stderr
    assert timed_out.stdout.startswith(b"line 0\nline 1\n")
    assert_our_lines_only(server.log(), TIMED_OUT)
