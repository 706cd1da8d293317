"""Slow peers against the real demo (uvicorn, httptools, SQLite): minimum data rates cut them.

A raw socket client that stops reading an export used to hold its pooled connection for the whole
``transfers`` policy (300 s); one that trickles a body held a request for as long. With
``MIN_SEND_RATE``/``MIN_RECEIVE_RATE`` the token fires with ``ClientTooSlow``: the work stops, the
pooled connection comes back, a body is answered 408, and the connection is closed.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest

from tests.demo._support import Demo, open_request, read_response, wait_until

from ._demo import DATABASES, assert_clean_log, demo_on

pytestmark = pytest.mark.e2e

SEND_RATE, SEND_GRACE = 65536, 1.0
RECEIVE_RATE, RECEIVE_GRACE = 4096, 1.0
EXPORT = "/reports/sales/export?from=2024-01-01&to=2030-12-31"
ABORT_LINE = r"{method} {path} aborted after ([0-9.]+)s: ClientTooSlow: client {what}.* \(408\)"


RATES = {
    "MIN_SEND_RATE": f"{SEND_RATE}/{SEND_GRACE}",
    "MIN_RECEIVE_RATE": f"{RECEIVE_RATE}/{RECEIVE_GRACE}",
}


@pytest.fixture(scope="module", params=DATABASES)
def demo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Demo]:
    with demo_on(request, tmp_path_factory, "rates", **RATES) as running:
        yield running


def pool_in_use(demo: Demo) -> int:
    in_use: int = demo.get("/healthz").json()["pool"]["in_use"]
    return in_use


def is_closed(client: socket.socket, timeout: float = 30.0) -> bool:
    """Drain what the server had sent; True once the connection ends (EOF or reset)."""
    client.settimeout(timeout)
    try:
        while client.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_a_reader_that_stops_reading_an_export_is_cut_and_its_connection_freed(
    demo: Demo,
) -> None:
    demo.mark_log()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    client.connect(("127.0.0.1", demo.port))
    with client:
        client.sendall(f"GET {EXPORT} HTTP/1.1\r\nHost: demo\r\n\r\n".encode())
        sent_at = time.monotonic()
        # The client reads nothing: the socket buffers fill, and the server's send() blocks.
        line = demo.wait_for_log(
            ABORT_LINE.format(method="GET", path=re.escape("/reports/sales/export"), what="read"),
            timeout=60,
        )
        cut_at = time.monotonic()
        freed_at = wait_until(lambda: pool_in_use(demo) == 0, 10, "the export's connection back")
        closed = is_closed(client)

    elapsed = float(line.group(1))
    # Cut no sooner than the grace period, and soon after: the deadline of a blocked send is the
    # time its chunk and the one before need at the rate (two ~100 KB chunks: ~3 s), plus the
    # time to fill the buffers. Generous for a loaded machine.
    assert SEND_GRACE <= elapsed < 30, elapsed
    assert cut_at - sent_at < 45
    assert freed_at - cut_at < 10
    assert closed
    assert_clean_log(demo.log())


@pytest.mark.parametrize("path", ["/uploads", "/orders"])
def test_a_trickled_body_is_answered_408_and_the_connection_closed(demo: Demo, path: str) -> None:
    demo.mark_log()
    client = open_request(
        demo.port,
        "POST",
        path,
        headers={"Content-Length": str(100_000), "Content-Type": "application/json"},
    )
    with client:
        started = time.monotonic()
        client.settimeout(0.2)
        status = None
        # 50 bytes every 0.1 s: 500 bytes/s, an eighth of the rate.
        while status is None and time.monotonic() - started < 30:
            try:
                client.sendall(b" " * 50)
                status, body = read_response(client, timeout=0.1)
            except TimeoutError:
                continue
            except OSError:
                break
        answered_after = time.monotonic() - started
        if status is None:
            status, body = read_response(client, timeout=10)
        closed = is_closed(client)

    assert status == 408
    assert b"sent its body slower than 4096 bytes/s" in body
    assert RECEIVE_GRACE <= answered_after < 20, answered_after
    assert closed
    demo.wait_for_log(ABORT_LINE.format(method="POST", path=path, what="sent"))
    assert not list(demo.upload_dir.glob("*.part"))
    assert_clean_log(demo.log())


def test_a_fast_client_is_not_cut(demo: Demo) -> None:
    demo.mark_log()
    response = demo.get("/reports/sales/export", params={"from": "2025-12-01", "to": "2025-12-31"})
    upload = demo.post("/uploads", content=b"z" * 2_000_000)

    assert response.status_code == 200 and len(response.content) > 100_000
    assert upload.status_code == 201
    assert "ClientTooSlow" not in demo.log()
