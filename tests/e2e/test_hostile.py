"""Hostile order bodies against the real demo (``uvicorn app.main:app``, httptools, SQLite).

What used to happen (issue 15): a 200 MB body took the process to 644 MB, 100k-deep nesting and a
5,000-digit integer answered 500 with tracebacks. What must happen now: a 4xx problem for each,
memory bounded whatever the body, and a log with no traceback and no ERROR line.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.demo._support import Demo, open_request, read_response, wait_until

from ._demo import DATABASES, assert_clean_log, demo_on, running_demo, sqlite_copy

pytestmark = pytest.mark.e2e

MB = 1024 * 1024
HUGE = 200 * MB
ORDER_LIMIT = 256 * 1024
ALLOWED_GROWTH = 48 * MB
"""What the server's peak RSS may grow by while refusing a 200 MB body (it grew by 600 MB)."""


@pytest.fixture(scope="module", params=DATABASES)
def demo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Demo]:
    with demo_on(request, tmp_path_factory, "hostile") as running:
        yield running


def memory(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process, in bytes, from ``/proc``."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def stream_body(client: socket.socket, size: int, *, chunked: bool) -> threading.Thread:
    """Send ``size`` bytes of body as fast as the server takes them, until it stops taking them."""

    def run() -> None:
        piece = b"7" * 65536
        sent = 0
        try:
            while sent < size:
                data = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
                client.sendall(data)
                sent += len(piece)
            if chunked:
                client.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed: what a hostile client gets

    sender = threading.Thread(target=run, daemon=True)
    sender.start()
    return sender


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_200_mb_order_body_is_refused_with_memory_bounded(demo: Demo, chunked: bool) -> None:
    demo.mark_log()
    pid = demo.server.process.pid
    assert b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    rss_before, _ = memory(pid)
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(HUGE)}
    # A declared length over the limit is refused before a byte is read; it comes anyway.
    client = open_request(
        demo.port, "POST", "/orders", headers={"Content-Type": "application/json", **framing}
    )
    with client:
        sender = stream_body(client, HUGE, chunked=chunked)
        status, body = read_response(client, timeout=60)
        sender.join(timeout=60)

    _, peak_after = memory(pid)
    assert status == 413
    assert f"the body is limited to {ORDER_LIMIT} bytes".encode() in body
    assert peak_after - rss_before < ALLOWED_GROWTH, (rss_before, peak_after)
    assert_clean_log(demo.log())


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"[" * 100_000 + b"]" * 100_000, b"nested deeper than 32 levels"),
        (b"{" * 100_000, b"nested deeper than 32 levels"),
        (b'{"customer_id": ' + b"9" * 5000 + b', "items": []}', b"longer than 32 characters"),
        (b'{"customer_id": 1, "items": [{"product_id": 1, "quantity": 1.' + b"5" * 5000 + b"}]}",
         b"longer than 32 characters"),
    ],
    ids=["100k-deep-arrays", "100k-deep-objects", "5000-digit-int", "5000-digit-float"],
)  # fmt: skip
def test_hostile_json_is_a_400_problem(demo: Demo, body: bytes, detail: bytes) -> None:
    demo.mark_log()
    client = open_request(
        demo.port, "POST", "/orders", body=body, headers={"Content-Type": "application/json"}
    )
    with client:
        status, response = read_response(client)

    assert status == 400
    assert detail in response
    assert_clean_log(demo.log())


def test_an_id_beyond_64_bits_is_a_422_problem(demo: Demo) -> None:
    demo.mark_log()
    body = b'{"customer_id": 1, "items": [{"product_id": 18446744073709551616, "quantity": 1}]}'
    client = open_request(
        demo.port, "POST", "/orders", body=body, headers={"Content-Type": "application/json"}
    )
    with client:
        status, response = read_response(client)

    assert status == 422
    assert b"items[0].product_id" in response
    assert_clean_log(demo.log())


# -- overload: streams acquire before they start -------------------------------------------------

EXPORT = "/reports/sales/export?from=2024-01-01&to=2030-12-31"
"""Both ends given: resolving the period needs no query; the export's first query is the CSV's."""


def pool_in_use(demo: Demo) -> int:
    in_use: int = demo.get("/healthz").json()["pool"]["in_use"]
    return in_use


def test_an_export_that_cannot_get_a_connection_is_a_503_problem_not_a_broken_200(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    directory = tmp_path_factory.mktemp("pool-held")
    database = sqlite_copy(tmp_path_factory, directory)
    # One pooled connection and one overflow, both held by exports whose clients stop reading.
    with running_demo(directory, database, DB_POOL_SIZE="1", DB_POOL_TIMEOUT="1") as demo:
        stalled = [open_request(demo.port, "GET", EXPORT) for _ in range(2)]
        try:
            wait_until(lambda: pool_in_use(demo) == 2, 30, "two stalled exports holding the pool")
            demo.mark_log()
            client = open_request(demo.port, "GET", EXPORT)
            with client:
                head, body = read_head_and_body(client)
        finally:
            for reader in stalled:
                reader.close()
        wait_until(lambda: pool_in_use(demo) == 0, 30, "the stalled exports' connections back")

        assert head.startswith(b"HTTP/1.1 503 "), head
        assert b"content-type: application/problem+json" in head.lower()
        assert b"retry-after: 1" in head.lower()
        assert b"the database is unavailable right now" in body
        assert "response already started" not in demo.log()
        assert_clean_log(demo.log())


def read_head_and_body(client: socket.socket, timeout: float = 30.0) -> tuple[bytes, bytes]:
    """One response with a Content-Length: its head (status line and headers) and its body."""
    client.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    while match and len(body) < int(match.group(1)):
        chunk = client.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body
