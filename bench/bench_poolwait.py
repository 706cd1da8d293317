"""Token fired -> request left the pool queue: SQLAlchemy's async pool and httpx's, p50/p99.

Each sample holds every connection of a pool, starts a request that has to wait for one, fires
its token 5-20 ms later (so it is really queued), and times, on one clock in this process
(``time.perf_counter()``), the moment the token fired (a registration on it) against the moment
the waiting call raised ``OperationCancelled``. Then the pool is checked: nothing checked out once
the holders let go, so no slot was lost on the way.

* ``sqlalchemy``: pool 1 + 1 overflow, both held, ``pool_timeout`` 30 s; the waiter runs a
  statement in a ``cancellable(session, token)`` block (``request_aborted.sqlalchemy``). aiosqlite
  on a temporary file; asyncpg and psycopg 3 on a PostgreSQL this script starts
  (``tests/_fixtures/postgres.py``; rows left out when its binaries are missing).
* ``httpx`` / ``httpx2``: ``cancellable_client`` with one connection, held by a request to uvicorn
  (in a thread of this process) that answers after 30 s; pool timeout 30 s.

Beside each, in the same run, the same wait **ignored** (an engine without
``install_cancellation`` or ``cancellable``, a plain ``AsyncClient``) with a 1 s pool timeout: the
request leaves the queue only when that timeout ends, whatever its token says. Fewer samples (each
costs a second). Goal: p99 <= 10 ms.

Reproduce with::

    .venv/bin/python bench/bench_poolwait.py            # writes bench/results/poolwait.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make tests/ importable
    sys.path.insert(0, str(ROOT))

from _util import environment, percentile, table  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine  # noqa: E402

from request_aborted import (  # noqa: E402
    CancellationTokenSource,
    ClientDisconnected,
    OperationCancelled,
)
from request_aborted.httpx import TOKEN_EXTENSION, cancellable_client  # noqa: E402
from request_aborted.sqlalchemy import cancellable, install_cancellation  # noqa: E402
from tests._fixtures.postgres import PostgresServer, find_binaries  # noqa: E402
from tests.request_aborted.integrations._slow_server import (  # noqa: E402
    SlowServer,
    running_slow_server,
)

RESULTS = ROOT / "bench" / "results" / "poolwait.md"
IGNORED_POOL_TIMEOUT = 1.0


@dataclass
class Row:
    path: str
    variant: str
    left_after: list[float] = field(default_factory=list)
    """Seconds from the token firing to the waiting call raising."""
    outcomes: dict[str, int] = field(default_factory=dict)
    slots_lost: int = 0

    def note(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


Wait = Callable[[CancellationTokenSource], Awaitable[None]]


async def sample(row: Row, wait: Wait, rng: random.Random) -> None:
    """One queued request, its token fired after 5-20 ms; how long until it left."""
    source = CancellationTokenSource()
    fired: list[float] = []
    source.token.register(lambda _: fired.append(time.perf_counter()))
    handle = asyncio.get_running_loop().call_later(
        rng.uniform(0.005, 0.02), source.cancel, ClientDisconnected()
    )
    try:
        await wait(source)
        row.note("answered")
    except OperationCancelled:
        row.note("OperationCancelled")
    except Exception as exc:  # the ignored variant's pool timeout
        row.note(type(exc).__name__)
    ended = time.perf_counter()
    handle.cancel()
    if fired:
        row.left_after.append(ended - fired[0])


# -- SQLAlchemy ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def held_engine(url: str, honoured: bool) -> AsyncIterator[AsyncEngine]:
    timeout = 30.0 if honoured else IGNORED_POOL_TIMEOUT
    engine = create_async_engine(url, pool_size=1, max_overflow=1, pool_timeout=timeout)
    if honoured:
        install_cancellation(engine)
    try:
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(2):
                connection = await stack.enter_async_context(engine.connect())
                await connection.execute(text("SELECT 1"))
            yield engine
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


async def sqlalchemy_row(path: str, url: str, honoured: bool, samples: int, seed: int) -> Row:
    row = Row(path, "honoured" if honoured else "ignored")
    rng = random.Random(seed)
    async with held_engine(url, honoured) as engine:

        async def wait(source: CancellationTokenSource) -> None:
            async with AsyncSession(engine) as session:
                if not honoured:  # code that ignores the token
                    await session.execute(text("SELECT 1"))
                    return
                async with cancellable(session, source.token):
                    await session.execute(text("SELECT 1"))

        for _ in range(samples):
            await sample(row, wait, rng)
        row.slots_lost = int(engine.pool.checkedout()) - 2  # type: ignore[attr-defined]
    return row


# -- httpx ---------------------------------------------------------------------------------------


async def httpx_row(
    module: Any, server: SlowServer, honoured: bool, samples: int, seed: int
) -> Row:
    row = Row(module.__name__, "honoured" if honoured else "ignored")
    rng = random.Random(seed)
    limits = module.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = module.Timeout(60.0, pool=30.0 if honoured else IGNORED_POOL_TIMEOUT)
    client = (
        cancellable_client(limits=limits, timeout=timeout)
        if honoured
        else module.AsyncClient(limits=limits, timeout=timeout)
    )
    async with client:
        await client.get(f"{server.url}/fast")  # warm: the connection opened once
        holder_source = CancellationTokenSource()
        holder = asyncio.create_task(
            client.get(
                f"{server.url}/wait?seconds=300", extensions={TOKEN_EXTENSION: holder_source.token}
            )
        )
        await asyncio.sleep(0.2)  # the holder has the only connection

        async def wait(source: CancellationTokenSource) -> None:
            await client.get(f"{server.url}/fast", extensions={TOKEN_EXTENSION: source.token})

        for _ in range(samples):
            await sample(row, wait, rng)
        if honoured:
            holder_source.cancel()  # the transport aborts the holder's socket: a clean release
            with contextlib.suppress(OperationCancelled):
                await holder
            try:
                response = await client.get(f"{server.url}/fast", timeout=2.0)
                row.slots_lost = 0 if response.status_code == 200 else 1
            except Exception:
                row.slots_lost = 1
        else:
            holder.cancel()  # plain httpx: no clean way to give the slot back; not measured
            with contextlib.suppress(BaseException):
                await holder
    return row


# -- report --------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def render(rows: list[Row], args: argparse.Namespace, notes: list[str]) -> str:
    lines = [
        "# Token fired -> request left the pool queue",
        "",
        f"reproduce: `.venv/bin/python bench/bench_poolwait.py --samples {args.samples} "
        f"--ignored-samples {args.ignored_samples}`",
        "",
        environment("sqlalchemy", "aiosqlite", "asyncpg", "psycopg", "httpx", "httpx2"),
        "",
        table(
            ["pool", "variant", "samples", "p50 ms", "p99 ms", "max ms", "outcomes", "slots lost"],
            [
                [
                    r.path,
                    r.variant,
                    len(r.left_after),
                    ms(percentile(r.left_after, 0.5)),
                    ms(percentile(r.left_after, 0.99)),
                    ms(max(r.left_after)),
                    ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items())),
                    r.slots_lost if r.variant == "honoured" else "-",
                ]
                for r in rows
                if r.left_after
            ],
        ),
        "",
        f"*ignored*: the same wait without the integration and a {IGNORED_POOL_TIMEOUT:g} s pool "
        "timeout: the request stays queued until the timeout, whatever its token says.",
        *notes,
    ]
    return "\n".join(lines) + "\n"


async def run_all(
    args: argparse.Namespace, pg: PostgresServer | None, notes: list[str]
) -> list[Row]:
    rows: list[Row] = []
    directory = Path(tempfile.mkdtemp(prefix="bench-poolwait-"))
    sqlite_path = directory / "pool.db"
    sqlite3.connect(sqlite_path).close()
    targets = [("sqlalchemy aiosqlite", f"sqlite+aiosqlite:///{sqlite_path}")]
    if pg is not None:
        database = pg.create_database()
        for driver in ("asyncpg", "psycopg"):
            if importlib.util.find_spec(driver) is not None:
                targets.append((f"sqlalchemy {driver}", pg.url(database, driver)))
    for name, url in targets:
        rows.append(await sqlalchemy_row(name, url, True, args.samples, seed=15))
        rows.append(await sqlalchemy_row(name, url, False, args.ignored_samples, seed=16))
        print(f"{name}: done", flush=True)
    with running_slow_server() as server:
        for package in ("httpx", "httpx2"):
            if importlib.util.find_spec(package) is None:
                notes.append(f"{package} is not installed: no row.")
                continue
            module = importlib.import_module(package)
            rows.append(await httpx_row(module, server, True, args.samples, seed=15))
            rows.append(await httpx_row(module, server, False, args.ignored_samples, seed=16))
            print(f"{package}: done", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--ignored-samples", type=int, default=5)
    args = parser.parse_args()
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        pg = None
        if find_binaries() is not None:
            pg = stack.enter_context(PostgresServer.start_new())
        else:
            notes.append("No PostgreSQL binaries found: no asyncpg/psycopg rows.")
        rows = asyncio.run(run_all(args, pg, notes))
    text_ = render(rows, args, notes)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text_)
    print(text_)


if __name__ == "__main__":
    main()
