"""README's pitch, Starlette and FastAPI examples under a real uvicorn, left by a real curl.

The README promises one line per aborted request under a plain ``uvicorn app:app``: no logging
configuration here, only what uvicorn does by itself. Each example's slow endpoint outlasts
``curl --max-time 1``; the test reads the server's output for the 499 line, once, and no traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests._fixtures.servers import ServerProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl"),
]

Serve = Callable[..., ServerProcess]


@pytest.mark.parametrize(
    ("app", "target", "logged"),
    [
        pytest.param("pitch:app", "/report", "GET /report", id="pitch"),
        pytest.param("starlette_app:app", "/search?q=amber", "GET /search", id="starlette"),
        pytest.param("fastapi_app:app", "/reports/3", "GET /reports/3", id="fastapi"),
    ],
)
def test_readme_example_logs_one_499_line_when_curl_gives_up(
    serve: Serve, app: str, target: str, logged: str
) -> None:
    server = serve(app, extra=["--app-dir", "docs/examples"])
    curl = subprocess.run(
        ["curl", "--silent", "--max-time", "1", f"{server.base_url}{target}"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert curl.returncode == 28, curl  # 28: the operation timed out, so curl hung up

    server.wait_for_log(
        rf"INFO: +request_aborted: {logged} aborted after [0-9.]+s: "
        r"ClientDisconnected: client disconnected \(499\)"
    )
    output = server.log()
    assert output.count(f"{logged} aborted") == 1
    assert "Traceback" not in output


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_pitch_query_stops_when_curl_gives_up(serve: Serve) -> None:
    """The pitch's promise: the database stops scanning, so the server's core goes idle."""
    server = serve("pitch:app", extra=["--app-dir", "docs/examples"])
    subprocess.run(["curl", "--silent", "--max-time", "1", f"{server.base_url}/report"],
                   capture_output=True, timeout=30)  # fmt: skip
    server.wait_for_log(r"GET /report aborted after .*\(499\)")

    before = cpu_seconds(server.process.pid)
    time.sleep(2.0)
    used = cpu_seconds(server.process.pid) - before
    assert used < 0.1, f"the server used {used:.2f} s of CPU in the two seconds after the abort"
