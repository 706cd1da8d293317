"""README's pitch, Starlette and FastAPI examples under a real uvicorn, left by a real curl.

The README promises one line per aborted request under a plain ``uvicorn app:app``: no logging
configuration here, only what uvicorn does by itself. Each example's slow endpoint outlasts
``curl --max-time 1``; the test reads the server's output for the 499 line, once, and no traceback.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

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
