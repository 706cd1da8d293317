"""What the demo's end-to-end tests share: a running demo, raw sockets, and log assertions.

The demo runs under a real uvicorn process (httptools, as in production). Tests talk to it over
real sockets and read, from the server side, what happened: the ``/debug/events`` record
(``DEMO_DEBUG=1``), the server's log, the database itself and the process's CPU time.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._fixtures.servers import ServerProcess

__all__ = [
    "PROMPTLY",
    "Demo",
    "assert_no_traceback",
    "assert_quiet_abort",
    "named",
    "open_request",
    "read_response",
    "wait_until",
]

PROMPTLY = 1.5
"""How soon after the client left the server-side work must have stopped, in seconds.

A functional limit for a loaded 2-core machine (0.27-0.40 s were seen at a load average of 12),
far below what work that was not stopped takes (the whole-history report runs for 14-20 s). The
latency itself is measured in ``bench/bench_cancel_latency.py``, not here.
"""

Event = dict[str, Any]


@dataclass
class Demo:
    """One running demo server and the things beside it a test may inspect."""

    server: ServerProcess
    upload_dir: Path
    database: Any = None
    """The SQLite file (a ``Path``) or the ``PostgresDatabase`` the demo uses."""
    _log_mark: int = field(default=0, repr=False)

    @property
    def url(self) -> str:
        return self.server.base_url

    @property
    def port(self) -> int:
        return self.server.port

    def get(self, path: str, **options: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **options)

    def post(self, path: str, **options: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **options)

    def events(self, since: int = 0) -> list[Event]:
        events: list[Event] = self.get("/debug/events").json()
        return events[since:]

    def wait_for_event(
        self, since: int, ready: Callable[[list[Event]], bool], timeout: float = 15.0
    ) -> list[Event]:
        """Events recorded after index ``since``, once ``ready`` says they are complete."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events(since)
            if ready(events):
                return events
            if time.monotonic() > deadline:
                pytest.fail(f"events never became ready: {events}\n{self.log()}")
            time.sleep(0.01)

    def mark_log(self) -> None:
        """Assertions on ``log()`` see only what is printed from now on."""
        self._log_mark = len(self.server.log())

    def log(self) -> str:
        return self.server.log()[self._log_mark :]

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log())
            if match:
                return match
            if time.monotonic() > deadline or self.server.process.poll() is not None:
                pytest.fail(f"server output never matched {pattern!r}:\n{self.log()}")
            time.sleep(0.01)


def named(events: list[Event], path: str, name: str) -> list[Event]:
    return [e for e in events if e["path"] == path and e["event"] == name]


def open_request(
    port: int, method: str, target: str, *, body: bytes = b"", headers: dict[str, str] | None = None
) -> socket.socket:
    """Send a request on a fresh connection and hand back the socket, response unread."""
    client = socket.create_connection(("127.0.0.1", port))
    lines = [f"{method} {target} HTTP/1.1", "Host: demo"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    framing = {name.lower() for name in headers or {}} & {"content-length", "transfer-encoding"}
    if body and not framing:
        lines.append(f"Content-Length: {len(body)}")
    client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return client


def read_response(client: socket.socket, timeout: float = 10.0) -> tuple[int, bytes]:
    """Read one whole response (the server closes or sends Content-Length); status and bytes."""
    client.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    length = int(match.group(1)) if match else None
    while length is not None and len(body) < length:
        chunk = client.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ", 2)[1]), body


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition``; return when it held (``time.monotonic()``) or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout}s")
        time.sleep(0.005)
    return time.monotonic()


def assert_no_traceback(log: str) -> None:
    assert "Traceback" not in log, log
    assert "Exception in ASGI application" not in log, log
    assert "Exception ignored" not in log, log


def assert_quiet_abort(demo: Demo, method: str, path: str) -> None:
    """The library's one INFO line for a client that left, and nothing alarming besides."""
    demo.wait_for_log(
        rf"INFO: +request_aborted: {method} {re.escape(path)} aborted after [0-9.]+s: "
        r"ClientDisconnected.*\(499\)"
    )
    assert_no_traceback(demo.log())
