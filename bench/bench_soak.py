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
from typing import Any

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

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._parser = h11.Connection(h11.CLIENT)
        self._parser.send(h11.Request(method="GET", target="/", headers=[("host", "demo")]))
        self._parser.send(h11.EndOfMessage())
        self.status: int | None = None
        self.body = b""
        self.complete = False

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


@dataclass
class Soak:
    """What the soak saw; each field is one of the properties in the module docstring."""

    outcomes: list[Outcome]
    seconds: float
    before: dict[str, Any]
    after: dict[str, Any]
    app_backends: list[Any]
    log_errors: list[str]
    partial_uploads: list[str]
    torn_orders: list[str]
    stock_mismatches: dict[int, tuple[int, int]]
    orders_committed: int
    descriptors_before: Counter[str]
    descriptors_after: Counter[str]
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def failed_clients(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.failed]

    @property
    def vanished(self) -> int:
        return sum(outcome.vanished for outcome in self.outcomes)

    @property
    def http_slots_in_use(self) -> int:
        return sum(pool["busy"] + pool["requests"] for pool in self.after["http_pools"])

    @property
    def rss_growth(self) -> int:
        return int(self.after["rss_bytes"] - self.before["rss_bytes"])


def other_descriptors(seen: dict[str, Any], database_port: int, upstream_port: int) -> Counter[str]:
    """Open descriptors that no pool accounts for: everything but DB and upstream connections."""
    fds = seen["fds"]
    other: Counter[str] = Counter(fds["by_kind"])
    sockets = fds["sockets"]
    other["socket"] -= sockets.get(f"127.0.0.1:{database_port}", 0)
    other["socket"] -= sockets.get(f"127.0.0.1:{upstream_port}", 0)
    return other


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

    def clear_events(_: int = 0) -> None:  # the debug record is not what this soak measures
        httpx.delete(demo.url + "/debug/events", timeout=10).raise_for_status()

    asyncio.run(drive(host, port, make_plans(warm_up, seed + 1, vanish=0.0, start=-warm_up),
                      concurrency))  # fmt: skip
    clear_events()
    before = wait_until_quiet(demo)
    stock_before = _stock(database)
    demo.mark_log()
    upstream_mark = len(upstream.log())

    started = time.monotonic()
    outcomes = asyncio.run(drive(host, port, make_plans(requests, seed), concurrency, clear_events))
    seconds = time.monotonic() - started

    clear_events()
    after = wait_until_quiet(demo, timeout=30)
    counts = Counter(
        f"{o.plan.kind}:{o.plan.vanish or 'stayed'}:{'gone' if o.vanished else o.status or 'err'}"
        for o in outcomes
    )
    torn, committed = _torn_orders(database, outcomes)
    logs = demo.log() + upstream.log()[upstream_mark:]
    ports = (database.server.port, upstream.port)
    return Soak(
        outcomes=outcomes,
        seconds=seconds,
        before=before,
        after=after,
        app_backends=[row for row in database.backends() if row["state"] != "idle"],
        log_errors=[line for line in logs.splitlines() if re.match(r"(ERROR|CRITICAL)\b", line)]
        + [line for line in logs.splitlines() if "Traceback" in line],
        partial_uploads=[str(path) for path in demo.upload_dir.glob("*.part")],
        torn_orders=torn,
        stock_mismatches=_stock_mismatches(database, stock_before),
        orders_committed=committed,
        descriptors_before=other_descriptors(before, *ports),
        descriptors_after=other_descriptors(after, *ports),
        counts=counts,
    )


def _stock(database: PostgresDatabase) -> dict[int, int]:
    rows = database.query("SELECT product_id, quantity FROM stock")
    return {row["product_id"]: row["quantity"] for row in rows}


def _torn_orders(database: PostgresDatabase, outcomes: list[Outcome]) -> tuple[list[str], int]:
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


def _stock_mismatches(
    database: PostgresDatabase, before: dict[int, int]
) -> dict[int, tuple[int, int]]:
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


def environment() -> str:
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
    postgres = subprocess.run(
        [str(find_binaries() / "postgres"), "--version"], capture_output=True, text=True
    ).stdout.strip()
    return (
        f"Python {platform.python_version()}, {versions}, {postgres}; {cpu}, "
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--seed", type=int, default=20260101)
    args = parser.parse_args()
    with (
        PostgresServer.start_new() as server,
        tempfile.TemporaryDirectory(prefix="bench-soak-") as directory,
        soak_stack(server, Path(directory)) as (demo, database, upstream),
    ):
        soak = run_soak(demo, database, upstream, requests=args.requests,
                        concurrency=args.concurrency, seed=args.seed)  # fmt: skip
    text = report(soak, args.requests, args.concurrency, args.seed)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    for outcome in soak.failed_clients[:20]:
        print("failed:", outcome.plan.kind, outcome.plan.target, outcome.status, outcome.error)
    for line in (soak.log_errors + soak.torn_orders)[:20]:
        print(line)


if __name__ == "__main__":
    main()
