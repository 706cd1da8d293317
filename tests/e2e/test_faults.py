"""Faults: the database going away, an upstream that hangs, and clients that misbehave.

Each test breaks one thing around a running demo and states what a user of the demo must see:
fast and clear answers instead of hangs, recovery without a restart, a server that stays up, and
nothing committed on behalf of a request that did not complete.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests._fixtures.postgres import PostgresDatabase, PostgresServer
from tests.demo._support import Demo, assert_quiet_abort, open_request, read_response, wait_until

from ._demo import (
    assert_clean_log,
    internals,
    postgres_copy,
    running_demo,
    sqlite_copy,
    wait_until_quiet,
)

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"
ORDER = {"customer_id": 5, "items": [{"product_id": 3, "quantity": 1}]}
SETTLE = 1.0
"""Seconds after PostgreSQL is back before every answer must be good again (pool_pre_ping)."""


# -- PostgreSQL goes away, and comes back --------------------------------------------------------


@dataclass
class Sample:
    kind: str
    sent: float
    seconds: float
    status: int | None
    content_type: str = ""
    customer: int | None = None
    error: str = ""

    @property
    def done(self) -> float:
        return self.sent + self.seconds


@dataclass
class Outage:
    """A demo under steady load while PostgreSQL is stopped for two seconds, then started."""

    demo: Demo
    database: PostgresDatabase
    down_at: float
    """PostgreSQL's postmaster has exited."""
    restart_at: float
    """``start()`` is called: from here on it may accept connections again."""
    up_at: float
    """``start()`` returned: it accepts connections."""
    samples: list[Sample] = field(default_factory=list)
    log: str = ""

    def during(self) -> list[Sample]:
        """Requests sent and answered while PostgreSQL was certainly down."""
        return [s for s in self.samples if self.down_at < s.sent < s.done < self.restart_at]

    def after(self, settle: float) -> list[Sample]:
        return [s for s in self.samples if s.sent > self.up_at + settle]


def keep_asking(demo: Demo, worker: int, samples: list[Sample], stop: threading.Event) -> None:
    """One client in a loop: search, a short report, an order (a new customer each), health."""
    kinds = ["search", "report", "order", "health"]
    paths = {
        "search": "/search?q=lamp",
        "report": "/reports/sales?from=2024-01-20&to=2024-01-31",
        "health": "/healthz",
    }
    with httpx.Client(base_url=demo.url, timeout=30) as client:
        for n in range(10_000):
            if stop.is_set():
                return
            kind, customer = kinds[(n + worker) % 4], None
            sent = time.monotonic()
            try:
                if kind == "order":
                    customer = 20_000 + 1000 * worker + n
                    response = client.post("/orders", json={**ORDER, "customer_id": customer})
                else:
                    response = client.get(paths[kind])
                status, content_type = response.status_code, response.headers["content-type"]
            except httpx.HTTPError as exc:
                status, content_type, error = None, "", repr(exc)
            else:
                error = ""
            samples.append(
                Sample(kind, sent, time.monotonic() - sent, status, content_type, customer, error)
            )


@pytest.fixture(scope="module")
def outage(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    directory = tmp_path_factory.mktemp("outage")
    with postgres_copy(postgres) as database, running_demo(directory, database) as demo:
        assert demo.get("/healthz").status_code == 200
        demo.mark_log()
        samples: list[Sample] = []
        stop = threading.Event()
        clients = [
            threading.Thread(target=keep_asking, args=(demo, worker, samples, stop))
            for worker in range(4)
        ]
        clients.append(threading.Thread(target=one_long_report, args=(demo, samples)))
        for client in clients:
            client.start()
        try:
            time.sleep(1.0)
            wait_until(lambda: any("row_number" in (row["query"] or "")
                                   for row in database.backends()), 5,
                       "the long report running")  # fmt: skip
            postgres.stop()  # "fast": every backend is told to terminate
            down_at = time.monotonic()
            time.sleep(2.0)
            restart_at = time.monotonic()
            postgres.start()
            up_at = time.monotonic()
            wait_until(  # on a loaded machine 3 s gave as few as 20 requests past the settle
                lambda: sum(s.sent > up_at + SETTLE for s in samples) > 20,
                60,
                "21 requests sent after PostgreSQL was back",
            )
        finally:
            postgres.start()  # whatever happened: the next test needs it
            stop.set()
            for client in clients:
                client.join()
        yield Outage(demo, database, down_at, restart_at, up_at, samples, demo.log())


def one_long_report(demo: Demo, samples: list[Sample]) -> None:
    """The whole history's report: its statement is running when PostgreSQL goes away."""
    sent = time.monotonic()
    try:
        response = httpx.get(demo.url + "/reports/sales?to=2025-12-31", timeout=30)
    except httpx.HTTPError as exc:
        samples.append(Sample("running", sent, time.monotonic() - sent, None, error=repr(exc)))
        return
    samples.append(Sample("running", sent, time.monotonic() - sent, response.status_code,
                          response.headers["content-type"]))  # fmt: skip


@pytest.mark.postgres
def test_requests_during_a_postgres_outage_are_answered_at_once(outage: Outage) -> None:
    during = outage.during()
    assert len(during) > 20
    assert max(sample.seconds for sample in during) < 1.0  # nothing hangs on a dead database
    assert outage.demo.server.process.poll() is None
    health = [sample for sample in during if sample.kind == "health" and sample.status]
    assert health and {sample.status for sample in health} == {503}  # "degraded"


@pytest.mark.postgres
def test_requests_during_a_postgres_outage_get_503_problems(outage: Outage) -> None:
    during = [sample for sample in outage.during() if sample.kind != "health"]
    assert {(sample.status, sample.content_type) for sample in during} == {(503, PROBLEM)}


@pytest.mark.postgres
def test_a_request_running_when_postgres_stops_gets_a_503_and_no_traceback(
    outage: Outage,
) -> None:
    [running] = [sample for sample in outage.samples if sample.kind == "running"]
    assert (running.status, running.content_type) == (503, PROBLEM)
    assert_clean_log(outage.log)


@pytest.mark.postgres
def test_the_demo_recovers_by_itself_once_postgres_is_back(outage: Outage) -> None:
    after = outage.after(settle=SETTLE)  # pool_pre_ping replaces the dead pooled connections
    assert len(after) > 20
    assert {sample.status for sample in after} <= {200, 201}
    wait_until_quiet(outage.demo)
    assert [row for row in outage.database.backends() if row["state"] != "idle"] == []


@pytest.mark.postgres
def test_no_order_answered_with_an_error_is_committed(outage: Outage) -> None:
    orders = [sample for sample in outage.samples if sample.kind == "order"]
    rows = outage.database.query("SELECT customer_id FROM orders WHERE customer_id >= 20000")
    stored = {row["customer_id"] for row in rows}
    assert {s.customer for s in orders if s.status == 201} == stored
    assert any(s.status != 201 for s in orders)  # the outage did refuse some


# -- an upstream that accepts the connection and never answers ------------------------------------


class BlackHole:
    """A TCP server on 127.0.0.1 that reads everything and never answers; notes when peers close."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.accepted: list[float] = []
        self.closed: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve)

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    if sock is self._listener:
                        peer, _ = sock.accept()
                        self.accepted.append(time.monotonic())
                        selector.register(peer, selectors.EVENT_READ)
                        continue
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self.closed.append(time.monotonic())
                        selector.unregister(sock)
                        sock.close()
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]

    def __enter__(self) -> BlackHole:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_hanging_upstream_is_cut_off_by_the_search_budget(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    database = sqlite_copy(tmp_path_factory, tmp_path)
    with (
        BlackHole() as hole,
        running_demo(tmp_path, database, RECOMMENDER_URL=hole.url,
                     RECOMMENDATIONS_TIMEOUT="0.5") as demo,
    ):  # fmt: skip
        with httpx.Client(base_url=demo.url, timeout=10) as client:
            started = time.monotonic()
            responses = [client.get("/search", params={"q": "lamp"}) for _ in range(3)]
            elapsed = time.monotonic() - started

        assert {r.status_code for r in responses} == {200}
        assert all(r.json()["products"] for r in responses)
        assert {r.json()["recommendations_missing"] for r in responses} == {"timeout"}
        # Each search waited its 0.5 s budget (plus room for a loaded machine), not the black
        # hole's forever: without the budget each would end at the client's 10 s timeout.
        assert elapsed < 3 * (0.5 + 1.5)
        # The demo hung up on every call it gave up on, and no pool slot stayed taken.
        wait_until(lambda: len(hole.closed) == len(hole.accepted) == 3, 1, "the calls closed")
        wait_until_quiet(demo, timeout=1)

        started = time.monotonic()
        health = demo.get("/healthz")
        assert time.monotonic() - started < 2.0 + 0.5  # the probe's own budget
        assert health.status_code == 503 and health.json()["upstream"] == "timeout"
        assert_clean_log(demo.log())


# -- clients that misbehave -----------------------------------------------------------------------

MALFORMED = {
    "not http": b"GARBAGE\r\n\r\n",
    "header without a colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    "NUL in the target": b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    "unknown HTTP version": b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    "Content-Length not a number": b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
    "negative Content-Length": b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "Content-Length and chunked": b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad chunk size": b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nZZZ\r\n{}\r\n0\r\n\r\n",
    "TLS handshake": bytes.fromhex("1603010200010001fc0303") + bytes(300),
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


@pytest.fixture(scope="module")
def edge_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """A demo on SQLite with a one-second request timeout, for misbehaving clients."""
    directory = tmp_path_factory.mktemp("edge")
    with running_demo(directory, sqlite_copy(tmp_path_factory, directory),
                      REQUEST_TIMEOUT="1") as demo:  # fmt: skip
        yield demo


@pytest.fixture
def edge(edge_demo: Demo) -> Iterator[Demo]:
    """The edge demo; afterwards it must still serve, with nothing committed and nothing logged."""
    edge_demo.mark_log()
    orders = order_count(edge_demo)
    yield edge_demo
    assert edge_demo.get("/healthz").status_code == 200
    assert order_count(edge_demo) == orders
    assert_clean_log(edge_demo.log())


def order_count(demo: Demo) -> int:
    with contextlib.closing(sqlite3.connect(demo.database)) as connection:
        return int(connection.execute("SELECT count(*) FROM orders").fetchone()[0])


def raw_exchange(demo: Demo, data: bytes, *, half_close: bool = False) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection; everything the server answers, and how fast."""
    with socket.create_connection(("127.0.0.1", demo.port), timeout=5) as client:
        started = time.monotonic()
        client.sendall(data)
        if half_close:
            client.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := client.recv(65536):
                answer += chunk
        return answer, time.monotonic() - started


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_gets_a_400_and_harms_nothing(edge: Demo, data: bytes) -> None:
    answer, seconds = raw_exchange(edge, data)

    assert answer.startswith(b"HTTP/1.1 400 ")  # at once: a hang would end as the 1 s timeout's 504
    assert seconds < 3  # and well before the socket's 5 s, however loaded the machine


def test_a_body_cut_short_by_a_half_close_commits_nothing(edge: Demo) -> None:
    body = json.dumps(ORDER).encode()
    head = f"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body) + 100}\r\n\r\n"

    answer, _ = raw_exchange(edge, head.encode() + body, half_close=True)

    assert answer == b""  # nobody left to answer: the client said it would send no more
    assert_quiet_abort(edge, "POST", "/orders")


def test_a_body_that_never_arrives_is_cut_off_by_the_request_timeout(edge: Demo) -> None:
    body = json.dumps(ORDER).encode()
    client = open_request(
        edge.port, "POST", "/orders", headers={"Content-Length": str(len(body) + 100)}, body=body
    )
    started = time.monotonic()
    try:
        status, answer = read_response(client, timeout=3.0)
    except TimeoutError:
        status, answer = 0, b""
    finally:
        client.close()

    assert status == 504 and time.monotonic() - started < 1.0 + 0.5
    assert b"request timed out after 1s" in answer


def test_slow_header_clients_do_not_hold_up_others_and_commit_nothing(edge: Demo) -> None:
    body = json.dumps(ORDER).encode()
    request = (
        f"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    started_before = internals(edge)["requests"]["started"]
    stop = threading.Event()

    def trickle() -> None:  # a byte every 50 ms; gives up before the headers are complete
        with socket.create_connection(("127.0.0.1", edge.port)) as client:
            for byte in request[:60]:
                if stop.wait(0.05):
                    return
                client.send(bytes([byte]))

    slow = [threading.Thread(target=trickle) for _ in range(30)]
    for client in slow:
        client.start()
    try:
        time.sleep(0.3)
        for _ in range(5):
            started = time.monotonic()
            assert edge.get("/healthz").status_code == 200
            # The trickling clients cost others nothing: each trickles for 3 s, so a probe queued
            # behind them would take seconds; 2 s is room for a loaded machine.
            assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        for client in slow:
            client.join()

    # None of them got as far as the app: only the five health checks did.
    assert internals(edge)["requests"]["started"] == started_before + 5
