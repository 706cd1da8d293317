"""The abort line under a plain ``uvicorn app:app``: visible by default, the user's when configured.

Real uvicorn processes serving ``tests/e2e/apps/plain.py`` (no logging set up in the app), and a
``curl --max-time`` that really disconnects. Without any logging configuration the line appears
once, in uvicorn's own format; with a ``--log-config`` it appears once, in the user's format only.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests._fixtures.servers import ServerProcess

pytestmark = pytest.mark.e2e

Serve = Callable[..., ServerProcess]
APP = "tests.e2e.apps.plain:app"
ABORT_LINE = re.compile(r"^.*request_aborted.*aborted after.*$", re.MULTILINE)


def plain_uvicorn(*extra: str) -> list[str]:
    """``uvicorn app:app`` as a user types it: no log level, no access-log switch."""
    return [sys.executable, "-m", "uvicorn", APP, "--port", "{port}", *extra]


def disconnect(server: ServerProcess, path: str) -> None:
    result = subprocess.run(
        ["curl", "-s", "--max-time", "0.5", f"{server.base_url}{path}"], check=False
    )
    assert result.returncode == 28  # curl's "operation timed out": it left, unanswered


def abort_lines(server: ServerProcess, pattern: str) -> list[str]:
    server.wait_for_log(pattern)
    server.stop()  # flushes everything it printed; the lines are counted on the final output
    return ABORT_LINE.findall(server.log())


def test_a_disconnect_prints_one_info_line_in_uvicorns_format_with_no_logging_configured(
    serve: Serve,
) -> None:
    server = serve(APP, command=plain_uvicorn())
    disconnect(server, "/slow")

    lines = abort_lines(server, r"aborted after")

    assert len(lines) == 1, server.log()
    assert re.fullmatch(
        r"INFO:     request_aborted: GET /slow aborted after [0-9.]+s: "
        r"ClientDisconnected: client disconnected \(499\)",
        lines[0],
    ), lines


def test_a_timeout_prints_one_warning_line_in_uvicorns_format_with_no_logging_configured(
    serve: Serve,
) -> None:
    server = serve(APP, command=plain_uvicorn())
    assert httpx.get(f"{server.base_url}/overrun", timeout=10).status_code == 504

    lines = abort_lines(server, r"aborted after")

    assert len(lines) == 1, server.log()
    assert re.fullmatch(
        r"WARNING:  request_aborted: GET /overrun aborted after [0-9.]+s: .*\(504\)", lines[0]
    ), lines


def test_a_log_config_decides_the_format_and_the_line_appears_once(
    serve: Serve, tmp_path: Path
) -> None:
    config = tmp_path / "logging.json"
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {"mine": {"format": "MINE %(levelname)s [%(name)s] %(message)s"}},
                "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "mine"}},
                "root": {"level": "INFO", "handlers": ["stderr"]},
            }
        )
    )
    server = serve(APP, command=plain_uvicorn("--log-config", str(config)))
    disconnect(server, "/slow")

    lines = abort_lines(server, r"aborted after")

    assert len(lines) == 1, server.log()
    assert re.fullmatch(
        r"MINE INFO \[request_aborted\] GET /slow aborted after [0-9.]+s: .*\(499\)", lines[0]
    ), lines
