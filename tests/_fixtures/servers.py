"""Real server processes on 127.0.0.1: uvicorn and hypercorn running an app from this repository.

End-to-end tests need what in-process clients cannot give: a socket that really closes. Each server
runs in its own process with its output in a file the test can read, on a free port, and is stopped
(SIGTERM, then SIGKILL) at teardown so nothing outlives the test.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    """A running server: its port, its process and everything it has printed."""

    process: subprocess.Popen[bytes]
    port: int
    output: Path
    command: Sequence[str] = field(default=())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until the output matches ``pattern``; fail with all the output if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log())
            if match:
                return match
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail(f"server output never matched {pattern!r}:\n{self.log()}")
            time.sleep(0.01)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def server_command(
    app: str, server: str, http: str, port: int, extra: Sequence[str] = ()
) -> list[str]:
    if server == "uvicorn":
        return [
            sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--http", http, "--no-access-log", "--lifespan", "on", *extra,
        ]  # fmt: skip
    if server == "hypercorn":
        return [sys.executable, "-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}", *extra]
    raise ValueError(f"unknown server {server!r}")


def start_server(
    app: str,
    output: Path,
    *,
    server: str = "uvicorn",
    http: str = "h11",
    env: dict[str, str] | None = None,
    command: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    ready_timeout: float = 20.0,
) -> ServerProcess:
    """Start ``app`` (``module:attribute``) and wait until it accepts connections."""
    port = free_port()
    argv = list(command) if command is not None else server_command(app, server, http, port, extra)
    argv = [part.replace("{port}", str(port)) for part in argv]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
    with output.open("wb") as sink:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=environment, stdout=sink, stderr=subprocess.STDOUT
        )
    running = ServerProcess(process, port, output, argv)
    deadline = time.monotonic() + ready_timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"{argv[2]} exited with {process.returncode}:\n{running.log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return running
        except OSError:
            if time.monotonic() > deadline:
                running.stop()
                pytest.fail(f"server did not listen on {port}:\n{running.log()}")
            time.sleep(0.05)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """A list the test appends started servers to; every one is stopped at teardown."""
    started: list[ServerProcess] = []
    yield started
    for running in started:
        running.stop()


@pytest.fixture
def serve(tmp_path: Path, servers: list[ServerProcess]):  # type: ignore[no-untyped-def]
    """``serve("tests.e2e.apps.x:app", server="hypercorn")`` starts a server for this test."""
    counter = iter(range(1000))

    def start(app: str, **options: object) -> ServerProcess:
        running = start_server(app, tmp_path / f"server-{next(counter)}.log", **options)  # type: ignore[arg-type]
        servers.append(running)
        return running

    return start
