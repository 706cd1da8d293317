"""OpenTelemetryAbortHook under real uvicorn: a client that really leaves, a real timeout.

The app's spans go to a JSON-lines file; the server span of each aborted request must carry the
status the client was given and the reason's event.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._fixtures.servers import ServerProcess

pytestmark = pytest.mark.e2e

Serve = Callable[..., ServerProcess]


def server_span(spans_file: Path, path: str, timeout: float = 10) -> dict[str, Any]:
    """The SERVER span of the (single) request to ``path``, once it was exported."""
    deadline = time.monotonic() + timeout
    while True:
        lines = spans_file.read_text().splitlines() if spans_file.exists() else []
        for line in lines:
            span = json.loads(line)
            if span["kind"] == "SpanKind.SERVER" and span["name"] == f"GET {path}":
                return span
        if time.monotonic() > deadline:
            pytest.fail(f"no server span for {path} in:\n" + "\n".join(lines))
        time.sleep(0.05)


def test_real_disconnect_and_timeout_mark_the_server_span(serve: Serve, tmp_path: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    server = serve("tests.e2e.apps.traced:app", server="uvicorn", http="httptools",
                   env={"SPANS_FILE": str(spans_file)})  # fmt: skip

    curl = subprocess.run(["curl", "-s", "--max-time", "1", f"{server.base_url}/slow?seconds=30"],
                          capture_output=True, timeout=10)  # fmt: skip
    left = server_span(spans_file, "/slow")
    timed_out = httpx.get(f"{server.base_url}/timeout", timeout=10)
    overran = server_span(spans_file, "/timeout")

    assert curl.returncode == 28  # curl gave up: the client left
    assert left["attributes"]["http.response.status_code"] == 499
    assert left["status"]["status_code"] == "UNSET"
    [event] = left["events"]
    assert event["name"] == "ClientDisconnected"
    assert 0 <= event["attributes"]["request_aborted.stop_seconds"] < 1

    assert timed_out.status_code == 504
    assert overran["attributes"]["http.response.status_code"] == 504
    assert overran["status"]["status_code"] == "ERROR"
    assert [event["name"] for event in overran["events"]] == ["RequestTimedOut"]
