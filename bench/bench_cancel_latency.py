"""How fast a fired token really stops the work: PostgreSQL, SQLite and an outbound HTTP call.

Each sample starts work that would run for seconds, waits until it is really running, fires the
token, and times what happens next on one clock (``time.perf_counter()``, system-wide monotonic):

* ``postgres backend idle``: a ``cancellable`` block runs ``pg_sleep(30)`` through SQLAlchemy,
  with asyncpg and with psycopg 3; a side connection polls ``pg_stat_activity`` until the backend
  leaves ``active`` (each poll takes ~0.1 ms, which bounds the resolution). ``raised`` is when the
  statement raised ``OperationCancelled`` in the caller. Per driver three ways are compared: the
  default (``pg_cancel_backend`` on the engine's side connection), the driver's own cancel request
  it falls back to (asyncpg's, psycopg's ``cancel_safe()``), and a plain ``task.cancel()`` for
  reference (SQLAlchemy then invalidates the connection: the ``reconnects`` column counts
  connections the pool had to open again). The ``pgbouncer`` rows go through a real PgBouncer in
  transaction mode (``tests/_fixtures/pgbouncer.py``): there the side connection finds the pooler
  and steps aside, and the cancel request is forwarded by PgBouncer.
* ``sqlite query stopped``: a recursive CTE in aiosqlite's worker thread; time until the statement
  raised (the thread returns from ``sqlite3_step`` only when the interrupt stopped it).
* ``httpx socket closed``: a ``cancellable_client`` request to uvicorn (in a thread of this
  process) whose handler waits for the client to leave; ``server saw FIN`` is when uvicorn
  delivered ``http.disconnect``, so the socket was closed on the wire. Plain httpx with
  ``task.cancel()`` for reference.

The script starts its own PostgreSQL and PgBouncer (``tests/_fixtures/``) and uvicorn; the machine's
other work shares its two cores, so run it on a quiet machine and read p99 with that in mind.
Targets: PostgreSQL p99 <= 20 ms, SQLite and httpx p99 <= 10 ms.

Reproduce with::

    .venv/bin/python bench/bench_cancel_latency.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import event, text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine  # noqa: E402

from request_aborted import CancellationTokenSource, OperationCancelled  # noqa: E402
from request_aborted.httpx import TOKEN_EXTENSION, cancellable_client  # noqa: E402
from request_aborted.sqlalchemy import cancellable, install_cancellation  # noqa: E402
from tests._fixtures.pgbouncer import PgBouncer, find_pgbouncer  # noqa: E402
from tests._fixtures.postgres import PostgresServer  # noqa: E402
from tests.request_aborted.integrations._slow_server import (  # noqa: E402
    SlowServer,
    running_slow_server,
)
from tests.request_aborted.integrations._support import pooler_connect_args  # noqa: E402

COUNT_FOREVER = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) "
    "SELECT count(*) FROM c"
)


@dataclass
class Row:
    """One line of the table: a path, what was measured, the samples in milliseconds."""

    path: str
    measure: str
    samples: list[float] = field(default_factory=list)
    note: str = ""

    def cells(self) -> list[str]:
        ordered = sorted(self.samples)
        p50 = statistics.median(ordered)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        return [
            self.path,
            self.measure,
            str(len(ordered)),
            f"{p50:.2f}",
            f"{p99:.2f}",
            f"{ordered[-1]:.2f}",
            self.note,
        ]


def bouncer_version() -> str:
    binary = find_pgbouncer()
    if binary is None:
        return "no pgbouncer"
    output = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout
    return output.splitlines()[0] if output else "pgbouncer"


def ms(seconds: float) -> float:
    return seconds * 1000.0


# -- PostgreSQL ---------------------------------------------------------------------------------


def count_connects(engine: AsyncEngine) -> list[int]:
    counter = [0]

    def connected(*_: object) -> None:
        counter[0] += 1

    event.listen(engine.sync_engine, "connect", connected)
    return counter


async def wait_for_state(side: Any, pid: int, wanted: Callable[[str | None], bool]) -> float:
    query = "SELECT state FROM pg_stat_activity WHERE pid = $1"
    while True:
        state = await side.fetchval(query, pid)
        if wanted(state):
            return time.perf_counter()


async def postgres_case(
    engine: AsyncEngine, side: Any, samples: int, mode: str
) -> tuple[list[float], list[float], int]:
    idle: list[float] = []
    raised: list[float] = []
    connects = count_connects(engine)
    for sample in range(samples + 1):  # the first one warms up the pool and the side connection
        source = CancellationTokenSource()
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(sleep_on_server(engine, source, started, mode))
        pid = await started
        await wait_for_state(side, pid, lambda state: state == "active")
        fired = time.perf_counter()
        if mode == "task.cancel":
            task.cancel()
        else:
            source.cancel()
        went_idle = await wait_for_state(side, pid, lambda state: state != "active")
        stopped = await task
        if sample == 0:
            connects[0] = 0
            continue
        idle.append(ms(went_idle - fired))
        raised.append(ms(stopped - fired))
    return idle, raised, connects[0]


async def sleep_on_server(
    engine: AsyncEngine, source: CancellationTokenSource, started: asyncio.Future[int], mode: str
) -> float:
    """Run ``pg_sleep(30)`` until stopped; return when the statement raised."""
    async with AsyncSession(engine) as session:
        if mode == "task.cancel":
            started.set_result(await session.scalar(text("SELECT pg_backend_pid()")) or 0)
            try:
                await session.execute(text("SELECT pg_sleep(30)"))
            except asyncio.CancelledError:
                return time.perf_counter()
        stopped = 0.0
        with contextlib.suppress(OperationCancelled):
            async with cancellable(session, source.token):
                started.set_result(await session.scalar(text("SELECT pg_backend_pid()")) or 0)
                try:
                    await session.execute(text("SELECT pg_sleep(30)"))
                except OperationCancelled:
                    stopped = time.perf_counter()
                    raise
        return stopped


@dataclass(frozen=True)
class Setup:
    """One PostgreSQL row: a driver, how the token stops the statement, and the path to it."""

    name: str
    driver: str
    side_connection: bool = True
    bouncer: bool = False
    mode: str = "token"


POSTGRES_SETUPS = [
    Setup("asyncpg token (pg_cancel_backend)", "asyncpg"),
    Setup("asyncpg token (cancel request)", "asyncpg", side_connection=False),
    Setup("asyncpg plain task.cancel()", "asyncpg", mode="task.cancel"),
    Setup("psycopg token (pg_cancel_backend)", "psycopg"),
    Setup("psycopg token (cancel_safe)", "psycopg", side_connection=False),
    Setup("psycopg plain task.cancel()", "psycopg", mode="task.cancel"),
    Setup("pgbouncer asyncpg token (cancel request)", "asyncpg", bouncer=True),
    Setup("pgbouncer psycopg token (cancel_safe)", "psycopg", bouncer=True),
]


async def measure_postgres(
    pg: PostgresServer, bouncer: PgBouncer | None, samples: int
) -> list[Row]:
    rows: list[Row] = []
    async with pg.side_connection() as side:
        for setup in POSTGRES_SETUPS:
            options: dict[str, Any] = {"pool_size": 1}
            if setup.bouncer:
                if bouncer is None:
                    print(f"skipped {setup.name}: pgbouncer not installed", file=sys.stderr)
                    continue
                url = bouncer.url(pg.database, setup.driver)
                options["connect_args"] = pooler_connect_args(setup.driver)
            else:
                url = pg.url(pg.database, setup.driver)
            engine = create_async_engine(url, **options)
            # Behind PgBouncer the side connection finds the pooler and steps aside by itself.
            install_cancellation(engine, side_connection=setup.side_connection)
            try:
                idle, raised, connects = await postgres_case(engine, side, samples, setup.mode)
            finally:
                await engine.dispose()
            note = f"reconnects {connects}/{samples}"
            rows.append(Row(f"postgres {setup.name}", "backend idle", idle, note))
            rows.append(Row(f"postgres {setup.name}", "raised", raised))
    return rows


# -- SQLite -------------------------------------------------------------------------------------


def fire(source: CancellationTokenSource, fired: list[float]) -> None:
    fired.append(time.perf_counter())
    source.cancel()


async def measure_sqlite(samples: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.db"
        sqlite3.connect(path).close()
        engine = create_async_engine(f"sqlite+aiosqlite:///{path}", pool_size=1)
        install_cancellation(engine)
        stopped: list[float] = []
        try:
            for _ in range(samples):
                source = CancellationTokenSource()
                fired: list[float] = []

                asyncio.get_running_loop().call_later(0.02, fire, source, fired)
                async with AsyncSession(engine) as session:
                    with contextlib.suppress(OperationCancelled):
                        async with cancellable(session, source.token):
                            try:
                                await session.execute(text(COUNT_FOREVER))
                            except OperationCancelled:
                                stopped.append(ms(time.perf_counter() - fired[0]))
                                raise
        finally:
            await engine.dispose()
    return [Row("sqlite token (interrupt)", "query stopped", stopped)]


# -- httpx --------------------------------------------------------------------------------------


async def http_case(
    server: SlowServer, samples: int, client: httpx.AsyncClient, token: bool
) -> tuple[list[float], list[float]]:
    closed: list[float] = []
    raised: list[float] = []
    for _ in range(samples):
        key = uuid.uuid4().hex
        source = CancellationTokenSource()
        extensions = {TOKEN_EXTENSION: source.token} if token else {}
        task = asyncio.create_task(
            client.get(f"{server.url}/wait?key={key}", extensions=extensions)
        )
        # The server runs in another thread: poll what it recorded (an Event is not thread-safe).
        while key not in server.requests:  # noqa: ASYNC110
            await asyncio.sleep(0.0005)
        await asyncio.sleep(0.002)
        fired = time.perf_counter()
        if token:
            source.cancel()
        else:
            task.cancel()
        try:
            await task
        except (OperationCancelled, asyncio.CancelledError):
            raised.append(ms(time.perf_counter() - fired))
        while key not in server.disconnects:  # noqa: ASYNC110
            await asyncio.sleep(0.0002)
        closed.append(ms(server.disconnects[key] - fired))
    return closed, raised


async def measure_httpx(server: SlowServer, samples: int) -> list[Row]:
    rows: list[Row] = []
    async with cancellable_client(timeout=60) as client:
        closed, raised = await http_case(server, samples, client, token=True)
    rows += [
        Row("httpx token (socket shutdown)", "server saw FIN", closed),
        Row("httpx token (socket shutdown)", "raised", raised),
    ]
    async with httpx.AsyncClient(timeout=60) as client:
        closed, raised = await http_case(server, samples, client, token=False)
    rows += [
        Row("httpx plain task.cancel()", "server saw FIN", closed),
        Row("httpx plain task.cancel()", "raised", raised),
    ]
    return rows


# -- report -------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    header = ["path", "fired -> ...", "n", "p50 ms", "p99 ms", "max ms", ""]
    body = [row.cells() for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])


async def run_all(
    samples: int,
    pg: PostgresServer,
    bouncer: PgBouncer | None,
    server: SlowServer,
    only: str | None,
) -> list[Row]:
    rows: list[Row] = []
    if only in (None, "postgres"):
        rows += await measure_postgres(pg, bouncer, samples)
    if only in (None, "sqlite"):
        rows += await measure_sqlite(samples)
    if only in (None, "httpx"):
        rows += await measure_httpx(server, samples)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200, help="samples per row (200)")
    parser.add_argument("--only", choices=["postgres", "sqlite", "httpx"], help="one part only")
    args = parser.parse_args()
    names = ("sqlalchemy", "asyncpg", "psycopg", "aiosqlite", "httpx")
    versions = ", ".join(f"{name} {version(name)}" for name in names)
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(PostgresServer.start_new())
        bouncer = stack.enter_context(PgBouncer.start_new(pg)) if find_pgbouncer() else None
        server = stack.enter_context(running_slow_server())
        server_version = pg.query("SHOW server_version")[0]["server_version"]
        rows = asyncio.run(run_all(args.samples, pg, bouncer, server, args.only))
    print(table(rows))
    print()
    print(
        f"PostgreSQL {server_version}; {bouncer_version()}; Python {platform.python_version()}; "
        f"{versions}"
    )
    command = shlex.join([".venv/bin/python", "bench/bench_cancel_latency.py", *sys.argv[1:]])
    print(f"Reproduce with: {command}")


if __name__ == "__main__":
    main()
