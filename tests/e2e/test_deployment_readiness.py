"""Readiness under real uvicorn: SIGTERM turns /readyz to 503 while a request in flight finishes.

With ``drain_delay`` the lifetime keeps the signal from uvicorn for that long: uvicorn goes on
accepting connections, so a load balancer polling ``/readyz`` sees 503 and moves traffic away
while the instance still serves; then uvicorn drains as usual.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import httpx
import pytest

from tests._fixtures.background import in_background
from tests._fixtures.servers import ServerProcess

pytestmark = pytest.mark.e2e

Serve = Callable[..., ServerProcess]
DRAIN_DELAY = 1.5
GRACE = 1.0


def test_sigterm_turns_readiness_to_503_while_the_request_in_flight_completes(
    serve: Serve,
) -> None:
    server = serve("tests.e2e.apps.deployment:app", server="uvicorn", http="h11",
                   env={"SHUTDOWN_GRACE": str(GRACE), "DRAIN_DELAY": str(DRAIN_DELAY)})  # fmt: skip
    url = server.base_url
    before = httpx.get(f"{url}/readyz", timeout=5)
    in_flight = in_background(lambda: httpx.get(f"{url}/slow?seconds=1", timeout=15))
    server.wait_for_log(r"started /slow 1 ")

    signalled_at = time.monotonic()
    server.signal(signal.SIGTERM)
    server.wait_for_log("shutdown requested")
    during = httpx.get(f"{url}/readyz", timeout=5)  # a new connection: still accepted
    response = in_flight()
    exit_code = server.process.wait(DRAIN_DELAY + GRACE + 5)
    took = time.monotonic() - signalled_at

    assert (before.status_code, before.json()["status"]) == (200, "ready")
    assert (during.status_code, during.json()["status"]) == (503, "stopping")
    assert (response.status_code, response.text) == (200, "slow done")
    assert exit_code in (0, -signal.SIGTERM)
    assert DRAIN_DELAY <= took < DRAIN_DELAY + GRACE + 2
    output = server.log()
    assert "aborted after" not in output
    assert "Traceback" not in output


def test_without_drain_delay_uvicorn_stops_accepting_at_the_signal(serve: Serve) -> None:
    """Why the delay (or Kubernetes' preStop sleep) exists: uvicorn closes its listener at once,
    so nobody can read the 503; a probe only sees connections refused."""
    server = serve("tests.e2e.apps.deployment:app", server="uvicorn", http="h11",
                   env={"SHUTDOWN_GRACE": str(GRACE)})  # fmt: skip
    url = server.base_url
    in_flight = in_background(lambda: httpx.get(f"{url}/slow?seconds=1", timeout=15))
    server.wait_for_log(r"started /slow 1 ")

    server.signal(signal.SIGTERM)
    server.wait_for_log("shutdown requested")
    refused = False
    deadline = time.monotonic() + 5
    while not refused and time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/readyz", timeout=5)
            time.sleep(0.05)
        except httpx.TransportError:  # refused, or reset while still in the closed backlog
            refused = True
    response = in_flight()

    assert refused
    assert (response.status_code, response.text) == (200, "slow done")
