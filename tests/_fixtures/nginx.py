"""A real nginx reverse proxy on 127.0.0.1, configured by the test, in a temporary directory.

The production topology puts a proxy between the client and the app; whether a client's abort
still reaches the app depends on the proxy's settings. Missing nginx skips with a reason, except
under ``CI=true``, where ``.ci/run`` installs it and its absence is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._fixtures.servers import free_port

CONFIG = """
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
{user}
events {{ worker_connections 64; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering {buffering};
            proxy_request_buffering {buffering};
        }}
    }}
}}
"""


@dataclass
class Proxy:
    port: int
    root: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> str:
        path = self.root / "access.log"
        return path.read_text() if path.exists() else ""


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx",) if os.path.exists(path)), None
    )
    if found is None:
        message = "nginx is not installed (apt-get install nginx-light)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    """``nginx(upstream_port, buffering=True)`` starts a proxy in front of ``upstream_port``."""
    binary = nginx_binary()
    processes: list[subprocess.Popen[bytes]] = []

    def start(upstream: int, *, buffering: bool = True) -> Proxy:
        root = tmp_path / f"nginx-{len(processes)}"
        root.mkdir()
        port = free_port()
        user = "user root root;" if os.geteuid() == 0 else ""
        config = CONFIG.format(root=root, user=user, port=port, upstream=upstream,
                               buffering="on" if buffering else "off")  # fmt: skip
        (root / "nginx.conf").write_text(config)
        process = subprocess.Popen(
            [binary, "-c", str(root / "nginx.conf"), "-p", str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        processes.append(process)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return Proxy(port, root)
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (root / "error.log").read_text() if (root / "error.log").exists() else ""
                    pytest.fail(f"nginx did not start:\n{log}")
                time.sleep(0.05)

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
