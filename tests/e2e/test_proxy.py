"""The production topology: the same aborts through a real nginx in front of uvicorn.

nginx passes a client's abort on to the upstream by default (``proxy_ignore_client_abort off``): it
closes its upstream connection and logs 499. With buffering on or off, the app's token must fire.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest

from tests._fixtures.nginx import Proxy
from tests._fixtures.servers import ServerProcess
from tests.e2e.test_disconnects import assert_quiet_abort, events_when, fired, has

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("buffering", [True, False], ids=["buffered", "unbuffered"])
# nginx logs 499 when the client left before the response started, 200 when it left mid-body.
@pytest.mark.parametrize(("path", "proxy_status"), [("/slow", 499), ("/stream", 200)])
def test_client_abort_through_nginx_reaches_the_app(
    serve: Callable[..., ServerProcess],
    nginx: Callable[..., Proxy],
    buffering: bool,
    path: str,
    proxy_status: int,
) -> None:
    app = serve("tests.e2e.apps.watch:app", server="uvicorn", http="httptools")
    proxy = nginx(app.port, buffering=buffering)
    started = time.monotonic()

    curl = subprocess.run(
        ["curl", "--silent", "--output", "/dev/null", "--max-time", "0.5", proxy.base_url + path],
        check=False,
    )

    assert curl.returncode == 28
    event = fired(events_when(app, has(path, "fired")), path)
    assert event["reason"] == "ClientDisconnected"
    assert event["at"] - started < 0.5 + 1.0
    assert_quiet_abort(app, "GET", path)
    deadline = time.monotonic() + 5
    while f'"GET {path} HTTP/1.1" {proxy_status}' not in proxy.access_log():
        assert time.monotonic() < deadline, proxy.access_log()
        time.sleep(0.02)
