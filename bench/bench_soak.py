"""Reliability soak: the demo on PostgreSQL with a small pool, and half its clients vanishing.

A mixed workload - search (database, then the recommendations upstream), a short report, orders,
uploads, short CSV exports, health checks - from raw asyncio sockets at a bounded concurrency, with
a fixed random seed. About half the clients vanish at a random phase: while sending the headers,
mid-body, during the database query, during the upstream call, or while the response streams; half
of those close with a FIN, half with a RST. Afterwards, with the load gone, the server must be
exactly as it was and nothing may be lost:

* every client that stayed got a complete, expected answer; every request the server started, it
  finished;
* no database connection checked out, no app backend ``active`` or ``idle in transaction``;
* no httpx pool slot in use, asyncio tasks and open descriptors back to the warm baseline, resident
  memory within 10 MB of it;
* no ERROR line and no traceback in either server's log;
* every order committed in full (order, all its items, the stock it took) or not at all.

The CI-sized run is ``tests/e2e/test_soak.py`` (2,000 requests). The full run writes
``bench/results/soak.md``; reproduce with::

    .venv/bin/python bench/bench_soak.py                 # 20,000 requests
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import h11
import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make tests/ importable
    sys.path.insert(0, str(ROOT))

from tests._fixtures.postgres import PostgresDatabase, PostgresServer, find_binaries  # noqa: E402
from tests._fixtures.servers import ServerProcess  # noqa: E402
from tests.demo._support import Demo  # noqa: E402
from tests.e2e._demo import (  # noqa: E402
    postgres_copy,
    running_demo,
    running_upstream,
    wait_until_quiet,
)

MIB = 1024 * 1024
RESULTS = ROOT / "bench" / "results" / "soak.md"
RESULTS_ABANDON = ROOT / "bench" / "results" / "soak-abandon.md"
SEARCH_WORDS = ("lamp", "mug", "kettle", "tent", "radio", "towel", "drill", "vase", "bell", "box")
HOT_PRODUCTS = range(1, 101)  # orders compete for these rows' locks and their stock
FIRST_CUSTOMER = 1000
KINDS = {"search": 30, "report": 12, "order": 25, "export": 10, "upload": 8, "health": 15}
PHASES = {  # where a client of each kind may vanish
    "search": ("headers", "query", "upstream"),
    "report": ("headers", "query"),
    "order": ("headers", "body", "query"),
    "export": ("headers", "query", "stream"),
    "upload": ("headers", "body"),
    "health": ("headers", "query"),
}
EXPECTED = {  # what a client that stays may be answered
    "search": {200},
    "report": {200},
    "order": {201, 409},  # 409: a hot product ran out of stock, and the order is refused whole
    "export": {200},
    "upload": {201},
    # 503 "degraded": the probe's own 2 s budget ran out, waiting for one of the 6 connections.
    "health": {200, 503},
}
DEMO_ENV = {"DB_POOL_SIZE": "3", "RECOMMENDATIONS_TIMEOUT": "1.0"}


@dataclass(frozen=True)
class Plan:
    """One client: what it asks for, and whether, when and how it vanishes."""

    index: int
    kind: str
    method: str
    target: str
    order: dict[str, Any] | None = None
    upload_size: int = 0
    vanish: str | None = None
    after: float = 0.0
    """Seconds to wait before vanishing (``query``/``upstream``), or the fraction sent/read."""
    reset: bool = False

    @property
    def body(self) -> bytes:
        if self.order is not None:
            return json.dumps(self.order).encode()
        return b"u" * self.upload_size  # made when sent: 20,000 plans must not hold them all


@dataclass
class Outcome:
    plan: Plan
    seconds: float = 0.0
    status: int | None = None
    body: bytes = b""
    vanished: bool = False
    error: str | None = None

    @property
    def failed(self) -> bool:
        """A client that stayed and did not get a complete, expected answer."""
        if self.vanished:
            return False
        return self.error is not None or self.status not in EXPECTED[self.plan.kind]


def make_plans(count: int, seed: int, *, vanish: float = 0.5, start: int = 0) -> list[Plan]:
    """``count`` clients drawn from ``seed``; ``vanish`` of them leave early."""
    rng = random.Random(seed)
    kinds, weights = zip(*KINDS.items(), strict=True)
    plans = []
    for index in range(start, start + count):
        kind = rng.choices(kinds, weights)[0]
        phase = rng.choice(PHASES[kind]) if rng.random() < vanish else None
        after = {"query": rng.uniform(0.005, 0.2), "upstream": rng.uniform(0.03, 0.15)}.get(
            phase or "", rng.random()
        )
        plans.append(_plan(rng, index, kind, phase, after, rng.random() < 0.5))
    return plans


def _plan(
    rng: random.Random, index: int, kind: str, phase: str | None, after: float, reset: bool
) -> Plan:
    common = {"index": index, "kind": kind, "vanish": phase, "after": after, "reset": reset}
    if kind == "search":
        word = rng.choice(SEARCH_WORDS)
        return Plan(method="GET", target=f"/search?q={word}&limit=5", **common)
    if kind == "report":
        last = 20 + rng.randrange(12)
        return Plan(method="GET", target=f"/reports/sales?from=2024-01-14&to=2024-01-{last}",
                    **common)  # fmt: skip
    if kind == "export":
        day = 1 + rng.randrange(28)
        return Plan(method="GET", target=f"/reports/sales/export?from=2025-03-{day:02d}"
                    f"&to=2025-03-{day:02d}", **common)  # fmt: skip
    if kind == "upload":
        size = rng.randrange(1, 512) * 1024
        return Plan(method="POST", target="/uploads", upload_size=size, **common)
    if kind == "health":
        return Plan(method="GET", target="/healthz", **common)
    products = rng.sample(HOT_PRODUCTS, rng.randint(1, 3))
    order = {
        "customer_id": FIRST_CUSTOMER + index,
        "items": [{"product_id": p, "quantity": rng.randint(1, 3)} for p in products],
    }
    return Plan(method="POST", target="/orders", order=order, **common)


class Queryable(Protocol):
    """A database the checks can read: PostgreSQL's side connection, or an SQLite file."""

    def query(self, sql: str, *args: object) -> list[Any]: ...


PATIENCE = 30.0
"""How long a client that stays waits for its answer before it counts as a failure."""


async def play(host: str, port: int, plan: Plan) -> Outcome:
    """Play one client on a fresh connection."""
    outcome = Outcome(plan)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = _head(plan)
        if plan.vanish == "headers":
            writer.write(head[: max(1, int(len(head) * plan.after) - 4)])  # never the blank line
            await writer.drain()
            return _vanish(writer, outcome)
        writer.write(head)
        body = plan.body
        if plan.vanish == "body":
            writer.write(body[: int(len(body) * plan.after)])
            await writer.drain()
            return _vanish(writer, outcome)
        writer.write(body)
        await writer.drain()
        response = ResponseReader(reader)
        if plan.vanish in ("query", "upstream"):
            try:
                await asyncio.wait_for(response.read_all(), plan.after)
            except TimeoutError:
                return _vanish(writer, outcome)
        elif plan.vanish == "stream":
            await asyncio.wait_for(response.read_some(int(16 * 1024 * plan.after) + 1), PATIENCE)
            if not response.complete:
                return _vanish(writer, outcome)
        await asyncio.wait_for(response.read_all(), PATIENCE)
        outcome.status, outcome.body = response.status, response.body
    except (OSError, TimeoutError, h11.ProtocolError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        writer.transport.abort()
        outcome.seconds = time.monotonic() - started
    return outcome


def _head(plan: Plan) -> bytes:
    lines = [f"{plan.method} {plan.target} HTTP/1.1", "Host: demo", "Connection: close"]
    if plan.method == "POST":
        kind = "application/json" if plan.kind == "order" else "application/octet-stream"
        lines += [f"Content-Type: {kind}", f"Content-Length: {len(plan.body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _vanish(writer: asyncio.StreamWriter, outcome: Outcome) -> Outcome:
    if outcome.plan.reset:  # RST instead of FIN: SO_LINGER with a zero timeout
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    outcome.vanished = True
    return outcome


class ResponseReader:
    """An HTTP/1.1 response read incrementally with h11 (chunked bodies included)."""

    def __init__(self, reader: asyncio.StreamReader, already: bytes = b"") -> None:
        self._reader = reader
        self._parser = h11.Connection(h11.CLIENT)
        self._parser.send(h11.Request(method="GET", target="/", headers=[("host", "demo")]))
        self._parser.send(h11.EndOfMessage())
        if already:  # read with the previous response on a keep-alive or pipelined connection
            self._parser.receive_data(already)
        self.status: int | None = None
        self.body = b""
        self.complete = False

    @property
    def leftover(self) -> bytes:
        """Bytes read past this response: the start of the next one, pipelined."""
        return bytes(self._parser.trailing_data[0]) if self.complete else b""

    async def read_head(self) -> None:
        while not self.complete and self.status is None:
            await self._step()

    async def read_some(self, at_least: int) -> None:
        while not self.complete and len(self.body) < at_least:
            await self._step()

    async def read_all(self) -> None:
        while not self.complete:
            await self._step()

    async def _step(self) -> None:
        event = self._parser.next_event()
        if event is h11.NEED_DATA:
            data = await self._reader.read(65536)
            if not data:
                raise ConnectionResetError("the server closed the connection mid-response")
            self._parser.receive_data(data)
        elif isinstance(event, h11.Response):
            self.status = event.status_code
        elif isinstance(event, h11.Data):
            self.body += event.data
        elif isinstance(event, h11.EndOfMessage):
            self.complete = True


async def drive(
    host: str,
    port: int,
    plans: list[Plan],
    concurrency: int,
    every: Callable[[int], object] | None = None,
) -> list[Outcome]:
    """Play ``plans`` at most ``concurrency`` at a time; ``every(done)`` after each 500."""
    semaphore = asyncio.Semaphore(concurrency)
    outcomes: list[Outcome] = []

    async def one(plan: Plan) -> None:
        async with semaphore:
            outcomes.append(await play(host, port, plan))
            if every is not None and len(outcomes) % 500 == 0:
                await asyncio.to_thread(every, len(outcomes))

    await asyncio.gather(*(one(plan) for plan in plans))
    return sorted(outcomes, key=lambda outcome: outcome.plan.index)


# -- what both modes share: the quiet server, its descriptors, the inspection -------------------


@dataclass
class Inspection:
    """What both modes check once the load is gone (the demo's internals before and after, its
    log, the uploads and orders on disk); each mode adds its own fields."""

    outcomes: list[Outcome]
    seconds: float
    before: dict[str, Any]
    after: dict[str, Any]
    log_errors: list[str]
    partial_uploads: list[str]
    torn_orders: list[str]
    stock_mismatches: dict[int, tuple[int, int]]
    orders_committed: int
    descriptors_before: Counter[str]
    descriptors_after: Counter[str]

    @property
    def http_slots_in_use(self) -> int:
        return sum(pool["busy"] + pool["requests"] for pool in self.after["http_pools"])

    @property
    def rss_growth(self) -> int:
        return int(self.after["rss_bytes"] - self.before["rss_bytes"])


def clear_events(demo: Demo) -> None:
    """Empty the demo's debug record: it is not what a soak measures, and it grows per request."""
    httpx.delete(demo.url + "/debug/events", timeout=10).raise_for_status()


def quiet(demo: Demo, timeout: float) -> dict[str, Any]:
    """The demo's internals once nothing runs any more, its debug record emptied first."""
    clear_events(demo)
    return wait_until_quiet(demo, timeout=timeout)


def descriptors_besides_pools(
    seen: dict[str, Any], sockets: tuple[str, ...], database: Path | None = None
) -> Counter[str]:
    """Open descriptors that no pool accounts for, by kind.

    ``sockets`` are the pools' peers as the inspection names them (``127.0.0.1:PORT`` for a
    connection out, ``inbound:PORT`` for one into an in-process server): a pooled connection is
    the pool's business, not a leak. A pooled SQLite connection holds the ``database`` file and
    its WAL files open; the pool grows to its size as the load needs, so how many it keeps after
    a soak is the pool's business too (``db_pool`` in the inspection).
    """
    fds = seen["fds"]
    other: Counter[str] = Counter(fds["by_kind"])
    for peer in sockets:
        other["socket"] -= fds["sockets"].get(peer, 0)
    if database is not None:
        other["file"] -= database_descriptors(seen, database)
    return other


def database_descriptors(seen: dict[str, Any], database: Path) -> int:
    """Descriptors open on the SQLite database and its ``-wal``/``-shm``/``-journal`` files."""
    path = os.path.realpath(database)
    return sum(
        count
        for target, count in seen["fds"]["files"].items()
        if target == path or target.startswith(path + "-")
    )


def error_lines(logs: str, *, besides: str | None = None) -> list[str]:
    """ERROR and CRITICAL lines and tracebacks; ``besides`` is a line counted apart."""
    return [
        line
        for line in logs.splitlines()
        if (re.match(r"(ERROR|CRITICAL)\b", line) and line != besides) or "Traceback" in line
    ]


def partial_uploads(demo: Demo) -> list[str]:
    """Upload files left half-written (an upload cut short must be removed)."""
    return [str(path) for path in demo.upload_dir.glob("*.part")]


# -- mode 1: requests vanishing -------------------------------------------------------------


@dataclass
class Soak(Inspection):
    """What the soak saw; each field is one of the properties in the module docstring."""

    app_backends: list[Any] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def failed_clients(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.failed]

    @property
    def vanished(self) -> int:
        return sum(outcome.vanished for outcome in self.outcomes)


def run_soak(
    demo: Demo,
    database: PostgresDatabase,
    upstream: ServerProcess,
    *,
    requests: int,
    concurrency: int = 20,
    seed: int = 20260101,
    warm_up: int = 300,
) -> Soak:
    """Warm the demo up, note its internals, run the soak, wait for quiet, and inspect."""
    host, port = "127.0.0.1", demo.port
    asyncio.run(drive(host, port, make_plans(warm_up, seed + 1, vanish=0.0, start=-warm_up),
                      concurrency))  # fmt: skip
    before = quiet(demo, timeout=15)
    stock_before = _stock(database)
    demo.mark_log()
    upstream_mark = len(upstream.log())

    started = time.monotonic()
    outcomes = asyncio.run(
        drive(host, port, make_plans(requests, seed), concurrency, lambda _: clear_events(demo))
    )
    seconds = time.monotonic() - started

    after = quiet(demo, timeout=30)
    counts = Counter(
        f"{o.plan.kind}:{o.plan.vanish or 'stayed'}:{'gone' if o.vanished else o.status or 'err'}"
        for o in outcomes
    )
    torn, committed = _torn_orders(database, outcomes)
    logs = demo.log() + upstream.log()[upstream_mark:]
    pools = (f"127.0.0.1:{database.server.port}", f"127.0.0.1:{upstream.port}")
    return Soak(
        outcomes=outcomes,
        seconds=seconds,
        before=before,
        after=after,
        app_backends=[row for row in database.backends() if row["state"] != "idle"],
        log_errors=error_lines(logs),
        partial_uploads=partial_uploads(demo),
        torn_orders=torn,
        stock_mismatches=_stock_mismatches(database, stock_before),
        orders_committed=committed,
        descriptors_before=descriptors_besides_pools(before, pools),
        descriptors_after=descriptors_besides_pools(after, pools),
        counts=counts,
    )


def _stock(database: Queryable) -> dict[int, int]:
    rows = database.query("SELECT product_id, quantity FROM stock")
    return {row["product_id"]: row["quantity"] for row in rows}


def _torn_orders(database: Queryable, outcomes: list[Outcome]) -> tuple[list[str], int]:
    """Orders that are not exactly what was asked, answered or not; and how many were committed."""
    stored: dict[int, list[Any]] = {}
    for row in database.query(
        "SELECT o.id, o.customer_id, o.total_cents, i.product_id, i.quantity, i.unit_price_cents"
        " FROM orders o LEFT JOIN order_items i ON i.order_id = o.id WHERE o.customer_id >= $1",
        FIRST_CUSTOMER,
    ):
        stored.setdefault(row["customer_id"], []).append(row)
    torn = []
    for outcome in outcomes:
        order = outcome.plan.order
        if order is None:
            continue
        rows = stored.pop(order["customer_id"], [])
        asked = sorted((item["product_id"], item["quantity"]) for item in order["items"])
        found = sorted((row["product_id"], row["quantity"]) for row in rows)
        name = f"order of client {outcome.plan.index} ({outcome.status or 'vanished'})"
        if rows and found != asked:
            torn.append(f"{name}: items {found}, asked {asked}")
        elif rows and len({row["id"] for row in rows}) != 1:
            torn.append(f"{name}: {len({row['id'] for row in rows})} orders")
        elif rows and rows[0]["total_cents"] != sum(
            row["quantity"] * row["unit_price_cents"] for row in rows
        ):
            torn.append(f"{name}: total does not match its items")
        elif outcome.status == 201 and not rows:
            torn.append(f"{name}: answered 201 but not in the database")
        elif outcome.status in (409, 422) and rows:
            torn.append(f"{name}: refused but committed")
    torn += [f"order of unknown customer {customer}" for customer in stored]
    committed = sum(1 for o in outcomes if o.plan.order and o.status == 201)
    return torn, committed


def _stock_mismatches(database: Queryable, before: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Products whose stock went down by more or less than their committed order items say."""
    after = _stock(database)
    ordered = {
        row["product_id"]: int(row["taken"])
        for row in database.query(
            "SELECT i.product_id, sum(i.quantity) AS taken FROM order_items i"
            " JOIN orders o ON o.id = i.order_id WHERE o.customer_id >= $1 GROUP BY i.product_id",
            FIRST_CUSTOMER,
        )
    }
    return {
        product: (before[product] - after[product], ordered.get(product, 0))
        for product in before
        if before[product] - after[product] != ordered.get(product, 0)
    }


def environment(*, postgres: bool = True) -> str:
    """One line on where the numbers come from, load average included: the machine is shared.

    Nothing is pinned to a core: PostgreSQL, the demo and the clients all need the CPU.
    """
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("starlette", "uvicorn", "sqlalchemy", "asyncpg", "uvloop")
    )
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.machine(),
    )  # fmt: skip
    server = "SQLite (aiosqlite)"
    if postgres:
        server = subprocess.run(
            [str(find_binaries() / "postgres"), "--version"], capture_output=True, text=True
        ).stdout.strip()
    return (
        f"Python {platform.python_version()}, {versions}, {server}; {cpu}, "
        f"{os.cpu_count()} cores, Linux {platform.release()}; load average "
        f"{' '.join(f'{load:.1f}' for load in os.getloadavg())} at the end; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}"
    )


@contextlib.contextmanager
def soak_stack(server: PostgresServer, directory: Path) -> Any:
    """PostgreSQL copy, upstream process and demo (pool of 3) pointing at both."""
    with (
        postgres_copy(server) as database,
        running_upstream(directory / "upstream") as upstream,
        running_demo(
            directory / "demo", database, RECOMMENDER_URL=upstream.base_url, **DEMO_ENV
        ) as demo,
    ):
        yield demo, database, upstream


def report(soak: Soak, requests: int, concurrency: int, seed: int) -> str:
    stayed = [o for o in soak.outcomes if not o.vanished]
    lines = [
        "# Reliability soak",
        "",
        f"reproduce: `.venv/bin/python bench/bench_soak.py --requests {requests} "
        f"--concurrency {concurrency} --seed {seed}`",
        "",
        f"{requests:,} requests in {soak.seconds:.1f} s ({requests / soak.seconds:.0f}/s), "
        f"{concurrency} at a time, {soak.vanished:,} clients vanished "
        f"({100 * soak.vanished / requests:.0f} %); demo on PostgreSQL, pool of 3 (+3 overflow), "
        "upstream in its own process.",
        "",
        environment(),
        "",
        "| check | before | after | verdict |",
        "|---|---|---|---|",
    ]
    rows = [
        ("clients that stayed and got a wrong or no answer", "", len(soak.failed_clients), 0),
        ("requests in flight in the server", soak.before["requests"]["in_flight"],
         soak.after["requests"]["in_flight"], 0),
        ("DB connections checked out", soak.before["db_pool"]["checked_out"],
         soak.after["db_pool"]["checked_out"], 0),
        ("app backends active / idle in transaction", "", len(soak.app_backends), 0),
        ("httpx pool slots in use", "", soak.http_slots_in_use, 0),
        ("asyncio tasks", soak.before["tasks"]["count"], soak.after["tasks"]["count"],
         soak.before["tasks"]["count"]),
        ("open descriptors (all)", soak.before["fds"]["total"], soak.after["fds"]["total"], None),
        ("open descriptors besides pooled DB/upstream connections",
         sum(soak.descriptors_before.values()), sum(soak.descriptors_after.values()),
         sum(soak.descriptors_before.values())),
        ("RSS (MiB)", f"{soak.before['rss_bytes'] / MIB:.1f}",
         f"{soak.after['rss_bytes'] / MIB:.1f}", None),
        ("ERROR lines and tracebacks", "", len(soak.log_errors), 0),
        ("partial uploads left on disk", "", len(soak.partial_uploads), 0),
        ("torn or lost orders", "", len(soak.torn_orders), 0),
        ("products whose stock disagrees with their orders", "", len(soak.stock_mismatches), 0),
    ]  # fmt: skip
    for name, before, after, want in rows:
        verdict = "" if want is None else ("ok" if after == want else "FAIL")
        lines.append(f"| {name} | {before} | {after} | {verdict} |")
    lines += [
        "",
        f"RSS growth {soak.rss_growth / MIB:+.1f} MiB (limit 10). Orders committed: "
        f"{soak.orders_committed:,}. Clients that stayed: {len(stayed):,}.",
        "",
        "Outcomes by kind, vanish phase and answer:",
        "",
        "| kind:phase:answer | clients |",
        "|---|---|",
        *(f"| {key} | {n} |" for key, n in sorted(soak.counts.items())),
    ]
    return "\n".join(lines) + "\n"


# -- mode 2: abandon, on the embedded default (SQLite, upstream in-process) ----------------------
#
# 200 connections at a time, each a single request, a keep-alive sequence or a pipelined batch;
# about half abandon at a random phase: while sending the headers, mid-body, waiting for the answer,
# right after the response headers or mid-response, by FIN or by RST. Bodies go up to 8 MB, and
# some orders are oversized (413). ``/metrics`` is read throughout.

ABANDON_KINDS = {
    "search": 22, "report": 4, "order": 22, "export": 8, "upload": 10, "oversized": 4,
    "health": 10, "metrics": 10,
}  # fmt: skip
LIGHT_KINDS = ("search", "order", "health", "metrics")
"""What keep-alive and pipelined connections ask for, several on one connection."""
ABANDON_PHASES = {
    "search": ("headers", "waiting", "after-headers"),
    "report": ("headers", "waiting", "after-headers"),
    "order": ("headers", "body", "waiting", "after-headers"),
    "export": ("headers", "waiting", "after-headers", "response"),
    "upload": ("headers", "body", "waiting"),
    "oversized": ("headers", "body"),
    "health": ("headers", "after-headers"),
    "metrics": ("headers", "after-headers", "response"),
}
ABANDON_EXPECTED = {  # under 200 connections on SQLite: 503 (pool timeout) and 504 are answers too
    "search": {200, 503, 504},
    "report": {200, 503, 504},
    "order": {201, 409, 503, 504},
    "export": {200, 503, 504},
    "upload": {201, 503, 504},
    "oversized": {413},
    "health": {200, 503},
    "metrics": {200},
}
ABANDON_ENV = {"UPLOAD_MAX_BYTES": str(16 * MIB)}
UVLOOP_PIPELINING = "ERROR:    ASGI callable returned without completing response."
"""uvicorn's line for a pipelined request whose client left mid-batch, on uvloop only: uvicorn
marks only its newest pipelined request disconnected, so an earlier one still running gets
uvloop's RuntimeError from ``send()`` (the asyncio loop drops the write silently) and, ended by
its client's departure, is logged as an app that returned without completing its response.
Counted apart: it is uvicorn's (without the middleware the RuntimeError leaves the app)."""
MAX_UPLOAD = 8 * MIB
ABANDON_PATIENCE = 75.0
"""A client that stays waits this long: past the reports policy (30 s) plus the pool's timeout
(30 s), the longest a demo under this load may legitimately take to answer."""
ORDER_CUSTOMERS = 11_000
"""Customers 1,000 to 11,999 exist in the soak's seeded SQLite file (300,000 sales rows)."""


@dataclass(frozen=True)
class Connection:
    """One client connection: its requests, how they are sent, and whether it is abandoned."""

    index: int
    style: str  # "single", "keep-alive" or "pipelined"
    asks: list[Plan]
    vanish: str | None
    after: float
    reset: bool


def make_connections(
    count: int, seed: int, *, vanish: float = 0.5, first_order: int = 0
) -> list[Connection]:
    """``count`` connections drawn from ``seed``; ``vanish`` of them are abandoned. Orders go to
    customers ``FIRST_CUSTOMER + first_order`` onwards, one customer per order."""
    rng = random.Random(seed)
    kinds, weights = zip(*ABANDON_KINDS.items(), strict=True)
    serial = 0
    orders = first_order
    connections = []
    for index in range(count):
        style = rng.choices(("single", "keep-alive", "pipelined"), (70, 18, 12))[0]
        chosen = (
            [rng.choices(kinds, weights)[0]]
            if style == "single"
            else [rng.choice(LIGHT_KINDS) for _ in range(rng.randint(2, 4))]
        )
        if style == "pipelined":  # GETs only: a pipelined POST body is just more bytes
            chosen = [kind if kind != "order" else "search" for kind in chosen]
        asks = []
        for kind in chosen:
            asks.append(_ask(rng, serial, kind, orders))
            serial += 1
            orders += kind == "order"
        phase = None
        if rng.random() < vanish:
            last = chosen[-1]
            phase = "after-headers" if style == "pipelined" else rng.choice(ABANDON_PHASES[last])
        after = rng.uniform(0.005, 0.3) if phase == "waiting" else rng.random()
        connections.append(Connection(index, style, asks, phase, after, rng.random() < 0.5))
    return connections


def _ask(rng: random.Random, serial: int, kind: str, order: int) -> Plan:
    if kind == "oversized":
        return Plan(serial, kind, "POST", "/orders", upload_size=300 * 1024)
    if kind == "upload":
        size = int(MAX_UPLOAD * rng.random() ** 3) + 1  # mostly small, some of several MB
        return Plan(serial, kind, "POST", "/uploads", upload_size=size)
    if kind == "metrics":
        return Plan(serial, kind, "GET", "/metrics")
    if kind == "export":
        day = 1 + rng.randrange(28)
        return Plan(serial, kind, "GET", f"/reports/sales/export?from=2025-03-{day:02d}"
                    f"&to=2025-03-{day:02d}")  # fmt: skip
    if kind == "report":
        day = 1 + rng.randrange(20)
        return Plan(serial, kind, "GET", f"/reports/sales?from=2025-02-{day:02d}"
                    f"&to=2025-02-{day + 6:02d}")  # fmt: skip
    plan = _plan(rng, serial, kind, None, 0.0, False)
    if kind == "order":
        assert plan.order is not None
        if order >= ORDER_CUSTOMERS:
            raise ValueError(f"more than {ORDER_CUSTOMERS:,} orders: not enough customers")
        plan.order["customer_id"] = FIRST_CUSTOMER + order
    return plan


def _request(plan: Plan, *, close: bool) -> bytes:
    lines = [f"{plan.method} {plan.target} HTTP/1.1", "Host: demo"]
    if close:
        lines.append("Connection: close")
    if plan.method == "POST":
        kind = "application/json" if plan.kind == "order" else "application/octet-stream"
        lines += [f"Content-Type: {kind}", f"Content-Length: {len(plan.body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + plan.body


async def play_connection(host: str, port: int, connection: Connection) -> list[Outcome]:
    """Play one connection; one outcome per request it carries."""
    outcomes = [Outcome(plan) for plan in connection.asks]
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    current = outcomes[0]
    try:
        if connection.style == "pipelined":
            last = len(connection.asks) - 1
            writer.write(b"".join(_request(plan, close=i == last)
                                  for i, plan in enumerate(connection.asks)))  # fmt: skip
            await writer.drain()
            already = b""
            for current in outcomes:
                response = ResponseReader(reader, already)
                if connection.vanish and current is outcomes[0]:
                    await asyncio.wait_for(response.read_head(), ABANDON_PATIENCE)
                    for outcome in outcomes:
                        outcome.vanished = True
                    _abandon(writer, connection.reset)
                    break
                await asyncio.wait_for(response.read_all(), ABANDON_PATIENCE)
                current.status, current.body = response.status, response.body
                already = response.leftover
        else:
            for current in outcomes:
                final = current is outcomes[-1]
                phase = connection.vanish if final else None
                done = await _exchange(reader, writer, current, phase, connection, close=final)
                if not done:
                    _abandon(writer, connection.reset)
                    break
    except (OSError, TimeoutError, h11.ProtocolError) as exc:
        current.error = f"{type(exc).__name__}: {exc}"
    finally:
        writer.transport.abort()
        for outcome in outcomes:
            outcome.seconds = time.monotonic() - started
    return outcomes


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    outcome: Outcome,
    phase: str | None,
    connection: Connection,
    *,
    close: bool,
) -> bool:
    """One request and its response on an open connection; ``False`` if abandoned."""
    data = _request(outcome.plan, close=close)
    head = data.index(b"\r\n\r\n") + 4
    if phase == "headers":
        writer.write(data[: max(1, int((head - 4) * connection.after))])  # never the blank line
        await writer.drain()
        outcome.vanished = True
        return False
    if phase == "body":
        body = len(data) - head
        writer.write(data[: head + int(body * connection.after)])
        await writer.drain()
        outcome.vanished = True
        return False
    writer.write(data)
    await writer.drain()
    response = ResponseReader(reader)
    if phase == "waiting":
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(response.read_all(), connection.after)
    elif phase == "after-headers":
        await asyncio.wait_for(response.read_head(), ABANDON_PATIENCE)
    elif phase == "response":
        some = int(64 * 1024 * connection.after) + 1
        await asyncio.wait_for(response.read_some(some), ABANDON_PATIENCE)
    if phase is not None and not response.complete:
        outcome.vanished = True
        return False
    await asyncio.wait_for(response.read_all(), ABANDON_PATIENCE)
    outcome.status, outcome.body = response.status, response.body
    if response.leftover:
        raise h11.RemoteProtocolError("bytes after the response on a keep-alive connection")
    return True


def _abandon(writer: asyncio.StreamWriter, reset: bool) -> None:
    if reset:  # RST instead of FIN: SO_LINGER with a zero timeout
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def drive_connections(
    host: str, port: int, connections: list[Connection], concurrency: int
) -> list[Outcome]:
    """Play ``connections``, at most ``concurrency`` open at a time; outcomes in request order."""
    semaphore = asyncio.Semaphore(concurrency)
    outcomes: list[Outcome] = []

    async def one(connection: Connection) -> None:
        async with semaphore:
            outcomes.extend(await play_connection(host, port, connection))

    await asyncio.gather(*(one(connection) for connection in connections))
    return sorted(outcomes, key=lambda outcome: outcome.plan.index)


class SqliteFile:
    """``Queryable`` for the soak's SQLite file (``$1`` placeholders, as PostgreSQL's)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str, *args: object) -> list[Any]:
        with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as connection:
            connection.row_factory = sqlite3.Row
            return [dict(row) for row in connection.execute(re.sub(r"\$\d+", "?", sql), args)]


@dataclass
class AbandonSoak(Inspection):
    """What mode 2 saw; each field is one of the checks in the module docstring."""

    connections: list[Connection] = field(default_factory=list)
    database_descriptors_before: int = 0
    database_descriptors_after: int = 0
    rss_peak: int = 0
    uvloop_pipelining_errors: int = 0

    @property
    def failed_clients(self) -> list[Outcome]:
        return [
            o
            for o in self.outcomes
            if not o.vanished
            and (o.error is not None or o.status not in ABANDON_EXPECTED[o.plan.kind])
        ]

    @property
    def abandoned(self) -> int:
        return sum(connection.vanish is not None for connection in self.connections)

    def statuses(self) -> Counter[str]:
        return Counter(
            f"{o.plan.kind}:{'gone' if o.vanished else o.status or 'err'}" for o in self.outcomes
        )


def embedded_upstream_port(demo: Demo) -> int:
    log = demo.server.log()  # the whole log: the line is printed at startup
    match = re.search(r"upstream started in-process at http://127\.0\.0\.1:(\d+)", log)
    assert match, "the demo did not say where its embedded upstream listens"
    return int(match.group(1))


def abandon_pools(upstream_port: int) -> tuple[str, ...]:
    """The embedded upstream's pooled connections: both ends are in the process, ours and its."""
    return (f"127.0.0.1:{upstream_port}", f"inbound:{upstream_port}")


def run_abandon_soak(
    demo: Demo,
    database: Path,
    *,
    connections: int,
    concurrency: int = 200,
    seed: int = 20260101,
    warm_up: int = 400,
) -> AbandonSoak:
    """Warm up (every pool at its size), note the internals, soak, wait for quiet, inspect."""
    host, port = "127.0.0.1", demo.port
    queries = SqliteFile(database)
    warm = make_connections(warm_up, seed + 1, vanish=0.0, first_order=ORDER_CUSTOMERS - 1000)
    asyncio.run(drive_connections(host, port, warm, concurrency))
    before = quiet(demo, timeout=60)
    stock_before = _stock(queries)
    taken_before = _taken(queries)
    # The warm-up's own orders are not the soak's: only customers ordered from now on count.
    known = {row["customer_id"] for row in queries.query("SELECT customer_id FROM orders")}
    demo.mark_log()
    peak = 0
    plans = make_connections(connections, seed)

    async def soak() -> list[Outcome]:
        nonlocal peak
        task = asyncio.ensure_future(drive_connections(host, port, plans, concurrency))
        while not task.done():
            await asyncio.sleep(0.5)
            peak = max(peak, _rss_of(demo.server.process.pid))
        return await task

    started = time.monotonic()
    outcomes = asyncio.run(soak())
    seconds = time.monotonic() - started
    after = quiet(demo, timeout=60)
    pools = abandon_pools(embedded_upstream_port(demo))
    after = _settled(demo, before, after, pools, database)
    asked = {o.plan.order["customer_id"] for o in outcomes if o.plan.order}
    assert not known & asked, "a soak order reused a warm-up customer: the checks would be wrong"
    torn, committed = _torn_orders(queries, outcomes)
    logs = demo.log()
    stock_after, taken_after = _stock(queries), _taken(queries)
    return AbandonSoak(
        connections=plans,
        outcomes=outcomes,
        seconds=seconds,
        before=before,
        after=after,
        log_errors=error_lines(logs, besides=UVLOOP_PIPELINING),
        uvloop_pipelining_errors=logs.count(UVLOOP_PIPELINING),
        partial_uploads=partial_uploads(demo),
        torn_orders=[line for line in torn if not _warm_up_order(line, known)],
        stock_mismatches={
            product: (stock_before[product] - stock_after[product], taken)
            for product in stock_before
            if stock_before[product] - stock_after[product]
            != (taken := taken_after.get(product, 0) - taken_before.get(product, 0))
        },
        orders_committed=committed,
        descriptors_before=descriptors_besides_pools(before, pools, database),
        descriptors_after=descriptors_besides_pools(after, pools, database),
        database_descriptors_before=database_descriptors(before, database),
        database_descriptors_after=database_descriptors(after, database),
        rss_peak=peak,
    )


def _taken(database: Queryable) -> dict[int, int]:
    """Stock taken by every order so far, product by product."""
    rows = database.query(
        "SELECT product_id, sum(quantity) AS taken FROM order_items GROUP BY product_id"
    )
    return {row["product_id"]: int(row["taken"]) for row in rows}


def _settled(
    demo: Demo,
    before: dict[str, Any],
    after: dict[str, Any],
    pools: tuple[str, ...],
    database: Path,
    timeout: float = 20,
) -> dict[str, Any]:
    """Internals once the descriptors are back to ``before``, or as they are after ``timeout``.

    A connection both ends of which are in the process (the embedded upstream's) closes on each
    side by its own keep-alive timer: a leak stays, those go within seconds.
    """
    deadline = time.monotonic() + timeout
    want = descriptors_besides_pools(before, pools, database)
    while descriptors_besides_pools(after, pools, database) != want and time.monotonic() < deadline:
        time.sleep(0.5)
        after = wait_until_quiet(demo, timeout=60)
    return after


def _warm_up_order(line: str, warm_up_customers: set[int]) -> bool:
    """``_torn_orders`` reports orders it was not told of: the warm-up's are expected."""
    prefix = "order of unknown customer "
    return line.startswith(prefix) and int(line.removeprefix(prefix)) in warm_up_customers


def _rss_of(pid: int) -> int:
    with contextlib.suppress(OSError):
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    return 0


@contextlib.contextmanager
def abandon_stack(directory: Path, database: Path) -> Any:
    """The demo as ``uvicorn app.main:app`` runs it (embedded upstream) on ``database``."""
    with running_demo(directory / "demo", database, **ABANDON_ENV) as demo:
        yield demo


def seeded_sqlite(directory: Path, rows: int = 300_000) -> Path:
    path = directory / "demo.db"
    command = [sys.executable, "-m", "app.seed", "--database-url", f"sqlite+aiosqlite:///{path}",
               "--rows", str(rows)]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return path


def abandon_report(soak: AbandonSoak, connections: int, concurrency: int, seed: int) -> str:
    requests = len(soak.outcomes)
    styles = Counter(connection.style for connection in soak.connections)
    phases = Counter(connection.vanish for connection in soak.connections if connection.vanish)
    lines = [
        "# Reliability soak, mode 2: abandoned connections on the embedded default (SQLite)",
        "",
        f"reproduce: `.venv/bin/python bench/bench_soak.py --mode abandon --connections "
        f"{connections} --concurrency {concurrency} --seed {seed}`",
        "",
        f"{connections:,} connections ({', '.join(f'{n:,} {s}' for s, n in styles.items())}) "
        f"carrying {requests:,} requests in {soak.seconds:.1f} s, {concurrency} open at a time; "
        f"{soak.abandoned:,} abandoned ({', '.join(f'{n:,} {p}' for p, n in phases.items())}), "
        "half by RST; uploads up to 8 MB, oversized orders, `/metrics` reads.",
        "",
        environment(postgres=False),
        "",
        "| check | before | after | verdict |",
        "|---|---|---|---|",
    ]
    rows = [
        ("clients that stayed and got a wrong or no answer", "", len(soak.failed_clients), 0),
        ("requests in flight in the server", soak.before["requests"]["in_flight"],
         soak.after["requests"]["in_flight"], 0),
        ("DB connections checked out", soak.before["db_pool"]["checked_out"],
         soak.after["db_pool"]["checked_out"], 0),
        ("httpx pool slots in use", "", soak.http_slots_in_use, 0),
        ("asyncio tasks", soak.before["tasks"]["count"], soak.after["tasks"]["count"],
         soak.before["tasks"]["count"]),
        ("open descriptors besides pooled upstream connections",
         sum(soak.descriptors_before.values()), sum(soak.descriptors_after.values()),
         sum(soak.descriptors_before.values())),
        ("RSS (MiB)", f"{soak.before['rss_bytes'] / MIB:.1f}",
         f"{soak.after['rss_bytes'] / MIB:.1f}", None),
        ("RSS peak during the soak (MiB)", "", f"{soak.rss_peak / MIB:.1f}", None),
        ("ERROR lines and tracebacks", "", len(soak.log_errors), 0),
        ("uvicorn+uvloop pipelining ERROR lines (upstream defect, see below)", "",
         soak.uvloop_pipelining_errors, None),
        ("partial uploads left on disk", "", len(soak.partial_uploads), 0),
        ("torn or lost orders", "", len(soak.torn_orders), 0),
        ("products whose stock disagrees with their orders", "", len(soak.stock_mismatches), 0),
    ]  # fmt: skip
    for name, before, after, want in rows:
        verdict = "" if want is None else ("ok" if after == want else "FAIL")
        lines.append(f"| {name} | {before} | {after} | {verdict} |")
    lines += [
        "",
        "uvicorn + uvloop, pipelined connections abandoned mid-batch: uvicorn marks only the",
        "newest queued request disconnected, so an earlier one still running gets uvloop's",
        "RuntimeError from send() and uvicorn logs 'ASGI callable returned without completing",
        "response.' The asyncio loop drops the write silently: 0 such lines in the same batch",
        "with --loop asyncio.",
        "",
        f"RSS growth {soak.rss_growth / MIB:+.1f} MiB. Orders committed: "
        f"{soak.orders_committed:,}.",
        "",
        "Answers by kind (`gone`: abandoned):",
        "",
        "| kind:answer | requests |",
        "|---|---|",
        *(f"| {key} | {n} |" for key, n in sorted(soak.statuses().items())),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("postgres", "abandon"), default="postgres",
                        help="postgres: the original soak; abandon: mode 2 on SQLite")  # fmt: skip
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=10_000, help="mode 2")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--seed", type=int, default=20260101)
    args = parser.parse_args()
    if args.mode == "abandon":
        main_abandon(args.connections, args.concurrency or 200, args.seed)
        return
    concurrency = args.concurrency or 20
    with (
        PostgresServer.start_new() as server,
        tempfile.TemporaryDirectory(prefix="bench-soak-") as directory,
        soak_stack(server, Path(directory)) as (demo, database, upstream),
    ):
        soak = run_soak(demo, database, upstream, requests=args.requests,
                        concurrency=concurrency, seed=args.seed)  # fmt: skip
    text = report(soak, args.requests, concurrency, args.seed)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    for outcome in soak.failed_clients[:20]:
        print("failed:", outcome.plan.kind, outcome.plan.target, outcome.status, outcome.error)
    for line in (soak.log_errors + soak.torn_orders)[:20]:
        print(line)


def main_abandon(connections: int, concurrency: int, seed: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-soak-abandon-") as directory:
        database = seeded_sqlite(Path(directory))
        with abandon_stack(Path(directory), database) as demo:
            soak = run_abandon_soak(
                demo, database, connections=connections, concurrency=concurrency, seed=seed
            )
    text = abandon_report(soak, connections, concurrency, seed)
    RESULTS_ABANDON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_ABANDON.write_text(text)
    print(text)
    for outcome in soak.failed_clients[:20]:
        print("failed:", outcome.plan.kind, outcome.plan.target, outcome.status, outcome.error)
    for line in (soak.log_errors + soak.torn_orders)[:20]:
        print(line)
    print(
        "descriptors before", dict(soak.descriptors_before), "after", dict(soak.descriptors_after)
    )


if __name__ == "__main__":
    main()
