"""Goodput when half the clients give up: the demo's report on PostgreSQL, token honoured or not.

Forty clients ask for the same sales report (about 0.4 s of PostgreSQL work when the server is
idle) in a closed loop, each on a fresh connection; twenty of them give up after 200 ms and ask
again at once, the other twenty wait for their answer. The demo runs with a pool of 10 (and 10
overflow) in two variants, started fresh for every round and alternated ABBA:

* ``honoured``: as shipped; the token stops the abandoned report's statement on the server;
* ``ignored``: ``HONOR_CANCELLATION=0`` (``app/benchmark.py``): the same handlers, given
  ``CancellationToken.NONE``, run every abandoned report to its end.

Per round: **goodput** (reports answered in full per second) and **PostgreSQL time spent on
abandoned work**. The demo's ``DEMO_DEBUG`` record stamps every statement with the client's port,
so each statement belongs to a client that stayed or one that gave up; the statement's busy time
(start to end, clipped to the measuring window) is summed per side, and PostgreSQL's CPU time over
the window (postmaster and backends, from psutil) is split in the same proportion. Between rounds
the demo is killed and the database's backends terminated, so no round inherits another's backlog.

Targets: goodput honoured/ignored >= 1.8; PostgreSQL time on abandoned work at least 90 % lower.

``--pool 2`` re-runs it with the pool **saturated** (2 + 2 overflow connections for 40 clients):
most requests then spend their time waiting for a connection, and an abandoned one that honours
its token leaves that queue when its client goes (``request_aborted.sqlalchemy``'s pool waits),
while an ignored one waits its turn and then runs the report for nobody.

Reproduce with::

    .venv/bin/python bench/bench_goodput.py            # writes bench/results/goodput.md
    .venv/bin/python bench/bench_goodput.py --pool 2   # writes bench/results/goodput-pool2.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make tests/ importable
    sys.path.insert(0, str(ROOT))

from bench_soak import ResponseReader, environment  # noqa: E402

from tests._fixtures.postgres import PostgresDatabase, PostgresServer  # noqa: E402
from tests.e2e._demo import PG_ROWS, postgres_copy, running_demo  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "goodput.md"
REPORT = "/reports/sales?from=2024-06-24&to=2024-06-30"
REQUEST = f"GET {REPORT} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n".encode()
PATIENCE = 0.2
BACKLOG_CAP = 60.0
"""Seconds after the window to let the server finish what it accepted."""
VARIANTS = {"honoured": {"HONOR_CANCELLATION": "1"}, "ignored": {"HONOR_CANCELLATION": "0"}}
DEMO_ENV = {"SHUTDOWN_GRACE": "0"}
DEFAULT_POOL = 10


@dataclass
class Cost:
    """Database time over a stretch of a round, and how much of it went to abandoned requests."""

    busy_abandoned: float
    """Statement busy seconds of requests whose client had given up."""
    busy_total: float
    pg_cpu: float
    """PostgreSQL CPU seconds (postmaster and backends)."""

    @property
    def pg_cpu_abandoned(self) -> float:
        """PostgreSQL's CPU split in proportion to statement busy time."""
        return self.pg_cpu * self.busy_abandoned / self.busy_total if self.busy_total else 0.0


@dataclass
class Round:
    variant: str
    seconds: float
    completed: int
    abandoned: int
    latencies: list[float]
    window: Cost
    """While the clients were there."""
    total: Cost
    """Until the server had finished every request it had accepted: the backlog included."""
    backlog_seconds: float

    @property
    def goodput(self) -> float:
        return self.completed / self.seconds


@dataclass
class Clients:
    completed: list[tuple[float, float]]  # (sent, answered) of full 200 answers
    gave_up: dict[int, float]  # client port -> when it gave up


async def load(port: int, clients: int, seconds: float) -> Clients:
    """``clients`` closed-loop clients for ``seconds``; the odd ones give up after PATIENCE."""
    result = Clients([], {})
    stop_at = time.monotonic() + seconds

    async def client(impatient: bool) -> None:
        while time.monotonic() < stop_at:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            local_port = writer.get_extra_info("sockname")[1]
            sent = time.monotonic()
            writer.write(REQUEST)
            response = ResponseReader(reader)
            wait = PATIENCE if impatient else max(0.0, stop_at - sent)
            try:
                await asyncio.wait_for(response.read_all(), wait)
            except TimeoutError:
                if impatient:
                    result.gave_up[local_port] = time.monotonic()
            except OSError:
                pass
            else:
                if response.status == 200:
                    result.completed.append((sent, time.monotonic()))
            finally:
                writer.transport.abort()

    await asyncio.gather(*(client(impatient=n % 2 == 1) for n in range(clients)))
    return result


def pg_cpu_seconds(server: PostgresServer) -> float:
    """CPU of the postmaster, its live backends, and the backends it has reaped."""
    assert server.process is not None
    postmaster = psutil.Process(server.process.pid)
    times = postmaster.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in postmaster.children():
        try:
            child_times = child.cpu_times()
        except psutil.Error:
            continue
        total += child_times.user + child_times.system
    return float(total)


@contextlib.contextmanager
def frozen_backends(database: PostgresDatabase) -> Iterator[None]:
    """SIGSTOP the database's client backends for the duration of the block."""
    rows = database.query(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'",
        database.name,
    )
    frozen = []
    for row in rows:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(row["pid"])
            process.suspend()
            frozen.append(process)
    try:
        yield
    finally:
        for process in frozen:
            with contextlib.suppress(psutil.Error):
                process.resume()


def statement_busy(
    events: list[dict[str, Any]], start: float, end: float
) -> dict[int | None, float]:
    """Seconds of statement execution per client port, clipped to ``start``..``end``."""
    running: dict[int | None, list[float]] = {}
    busy: dict[int | None, float] = {}
    for event in events:
        client = event.get("client")
        if event["event"] == "sql.started":
            running.setdefault(client, []).append(event["at"])
        elif event["event"] in ("sql.finished", "sql.failed") and running.get(client):
            began = running[client].pop()
            busy[client] = busy.get(client, 0.0) + max(
                0.0, min(event["at"], end) - max(began, start)
            )
    for client, began_list in running.items():  # still running when the window closed
        for began in began_list:
            busy[client] = busy.get(client, 0.0) + max(0.0, end - max(began, start))
    return busy


def run_round(
    variant: str,
    server: PostgresServer,
    database: PostgresDatabase,
    directory: Path,
    *,
    clients: int,
    seconds: float,
    pool: int = DEFAULT_POOL,
) -> Round:
    env = {**DEMO_ENV, "DB_POOL_SIZE": str(pool), **VARIANTS[variant]}
    with running_demo(directory / f"{variant}-{time.monotonic_ns()}", database, **env) as demo:
        for _ in range(2):  # warm: plans cached, pool filled
            httpx.get(demo.url + REPORT, timeout=60).raise_for_status()
        httpx.delete(demo.url + "/debug/events", timeout=10)
        cpu_before = pg_cpu_seconds(server)
        start = time.monotonic()
        seen = asyncio.run(load(demo.port, clients, seconds))
        end = time.monotonic()
        cpu_window = pg_cpu_seconds(server) - cpu_before
        # The requests accepted in the window keep costing after it: let the server finish them.
        drained = wait_for_backlog(demo.url, end + BACKLOG_CAP)
        cpu_total = pg_cpu_seconds(server) - cpu_before
        with frozen_backends(database):
            # Past the cap, abandoned reports may still keep every core busy and starve the
            # demo's event loop; frozen, they let it hand over its record at once.
            events = httpx.get(demo.url + "/debug/events", timeout=60).json()
            demo.server.process.kill()  # no graceful drain: its backlog is not the next round's
    database.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = $1 AND pid <> pg_backend_pid()",
        database.name,
    )
    completed = [(sent, done) for sent, done in seen.completed if done <= end]
    return Round(
        variant=variant,
        seconds=end - start,
        completed=len(completed),
        abandoned=len(seen.gave_up),
        latencies=[done - sent for sent, done in completed],
        window=cost(events, seen.gave_up, start, end, cpu_window),
        total=cost(events, seen.gave_up, start, drained, cpu_total),
        backlog_seconds=drained - end,
    )


def wait_for_backlog(url: str, cap: float) -> float:
    """When the demo had no request in flight any more (or ``cap``, whichever came first)."""
    while time.monotonic() < cap:
        try:
            seen = httpx.get(url + "/debug/internals", timeout=max(1.0, cap - time.monotonic()))
        except httpx.TimeoutException:
            break
        if seen.json()["requests"]["in_flight"] == 0:
            break
        time.sleep(0.2)
    return min(time.monotonic(), cap)


def cost(
    events: list[dict[str, Any]], gave_up: dict[int, float], start: float, end: float, cpu: float
) -> Cost:
    busy = statement_busy(events, start, end)
    abandoned = sum(seconds for port, seconds in busy.items() if port in gave_up)
    return Cost(abandoned, sum(busy.values()), cpu)


def report(rounds: list[Round], args: argparse.Namespace, environment: str) -> str:
    by = {variant: [r for r in rounds if r.variant == variant] for variant in VARIANTS}
    pairs = [
        (a, b) if a.variant == "honoured" else (b, a)
        for a, b in zip(rounds[0::2], rounds[1::2], strict=True)
    ]

    def median(variant: str, value: Callable[[Round], float]) -> float:
        return statistics.median(value(r) for r in by[variant])

    def ratios(value: Callable[[Round], float]) -> list[float]:
        return [value(h) / value(i) if value(i) else float("inf") for h, i in pairs]

    measures: list[tuple[str, Callable[[Round], float], str]] = [
        ("reports answered in full per second (goodput)", lambda r: r.goodput, "{:.2f}"),
        ("requests abandoned (clients that gave up)", lambda r: r.abandoned, "{:.0f}"),
        ("answer time of a client that waited, p50 s",
         lambda r: statistics.median(r.latencies) if r.latencies else 0.0, "{:.2f}"),
        ("statement busy s on abandoned requests, in the window",
         lambda r: r.window.busy_abandoned, "{:.1f}"),
        ("statement busy s on abandoned requests, backlog included",
         lambda r: r.total.busy_abandoned, "{:.1f}"),
        ("PostgreSQL CPU s, in the window", lambda r: r.window.pg_cpu, "{:.1f}"),
        ("PostgreSQL CPU s on abandoned requests, in the window",
         lambda r: r.window.pg_cpu_abandoned, "{:.1f}"),
        ("PostgreSQL CPU s on abandoned requests, backlog included",
         lambda r: r.total.pg_cpu_abandoned, "{:.1f}"),
        ("backlog left when the clients stopped, s to finish it",
         lambda r: r.backlog_seconds, "{:.1f}"),
    ]  # fmt: skip
    goodput = ratios(lambda r: r.goodput)
    cpu_total = ratios(lambda r: r.total.pg_cpu_abandoned)
    lines = [
        "# Goodput when half the clients give up"
        + ("" if args.pool == DEFAULT_POOL else f", pool saturated ({args.pool} + {args.pool})"),
        "",
        f"reproduce: `.venv/bin/python bench/bench_goodput.py --pairs {args.pairs} "
        f"--seconds {args.seconds:g} --clients {args.clients}"
        + ("" if args.pool == DEFAULT_POOL else f" --pool {args.pool}")
        + "`",
        "",
        f"`GET {REPORT}` (about 0.4 s of PostgreSQL work alone) against the demo on PostgreSQL "
        f"({PG_ROWS:,} sales rows), `DB_POOL_SIZE={args.pool}` (+{args.pool} overflow); "
        f"{args.clients} closed-loop "
        f"clients, half of them giving up after {PATIENCE * 1000:.0f} ms and asking again at "
        f"once; {args.pairs} pairs of {args.seconds:g} s rounds in ABBA order, a fresh demo per "
        "round. Medians over the rounds of each variant; ratios are taken within each pair. "
        "*Backlog included*: the requests a round accepted keep costing after its clients "
        f"stopped, so the server is left to finish them (up to {BACKLOG_CAP:g} s) and their "
        "statements count too.",
        "",
        environment,
        "",
        "| per round (median) | honoured | ignored (`HONOR_CANCELLATION=0`) |",
        "|---|---|---|",
        *(
            f"| {name} | {fmt.format(median('honoured', value))} "
            f"| {fmt.format(median('ignored', value))} |"
            for name, value, fmt in measures
        ),
        "",
        "| ratio, honoured / ignored | per pair | median | target | verdict |",
        "|---|---|---|---|---|",
        _ratio_row("goodput", goodput, ">= 1.8", statistics.median(goodput) >= 1.8),
        _ratio_row("PostgreSQL CPU on abandoned requests, backlog included", cpu_total,
                   "<= 0.10", statistics.median(cpu_total) <= 0.10),
        _ratio_row("PostgreSQL CPU on abandoned requests, in the window",
                   ratios(lambda r: r.window.pg_cpu_abandoned), "-", None),
        _ratio_row("statement busy on abandoned requests, backlog included",
                   ratios(lambda r: r.total.busy_abandoned), "-", None),
        "",
        "Every round:",
        "",
        "| round | variant | s | answered | gave up | goodput/s | backlog s "
        "| busy s abandoned / all (window; with backlog) | PG CPU s abandoned / all (same) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for n, r in enumerate(rounds, 1):
        w, t = r.window, r.total
        lines.append(
            f"| {n} | {r.variant} | {r.seconds:.1f} | {r.completed} | {r.abandoned} "
            f"| {r.goodput:.2f} | {r.backlog_seconds:.1f} "
            f"| {w.busy_abandoned:.1f} / {w.busy_total:.1f}; {t.busy_abandoned:.1f} / "
            f"{t.busy_total:.1f} | {w.pg_cpu_abandoned:.1f} / {w.pg_cpu:.1f}; "
            f"{t.pg_cpu_abandoned:.1f} / {t.pg_cpu:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _ratio_row(name: str, ratios: list[float], target: str, met: bool | None) -> str:
    listed = ", ".join(f"{ratio:.2f}" for ratio in ratios)
    verdict = "" if met is None else ("met" if met else "NOT met")
    return f"| {name} | {listed} | {statistics.median(ratios):.2f} | {target} | {verdict} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument(
        "--pool", type=int, default=DEFAULT_POOL, help="DB_POOL_SIZE (as many again in overflow)"
    )
    args = parser.parse_args()
    results = (
        RESULTS if args.pool == DEFAULT_POOL else RESULTS.with_name(f"goodput-pool{args.pool}.md")
    )
    order = ["honoured", "ignored", "ignored", "honoured"]
    plan = [order[n % 4] for n in range(2 * args.pairs)]
    rounds: list[Round] = []
    with (
        PostgresServer.start_new() as server,
        tempfile.TemporaryDirectory(prefix="bench-goodput-") as directory,
        postgres_copy(server) as database,
    ):
        for variant in plan:
            last = run_round(
                variant, server, database, Path(directory), clients=args.clients,
                seconds=args.seconds, pool=args.pool,
            )  # fmt: skip
            rounds.append(last)
            print(
                f"{variant:9} goodput {last.goodput:5.2f}/s  gave up {last.abandoned:4}  "
                f"PG CPU on abandoned {last.total.pg_cpu_abandoned:5.1f} s "
                f"of {last.total.pg_cpu:5.1f} (backlog {last.backlog_seconds:.1f} s)",
                flush=True,
            )
    text = report(rounds, args, environment())
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
