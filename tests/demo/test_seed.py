"""``python -m app.seed``: deterministic data, bulk-loaded, all or nothing, safe to re-run."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import subprocess
from pathlib import Path

import pytest

from app.seed import seed
from repositories import Database
from request_aborted import CancellationToken, CancellationTokenSource, OperationCancelled
from tests._fixtures.servers import ROOT

from .conftest import seed_command

TABLES = ("products", "stock", "customers", "sales")


def fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with contextlib.closing(sqlite3.connect(path)) as database:
        for table in TABLES:
            for row in database.execute(f"SELECT * FROM {table} ORDER BY 1"):
                digest.update(repr(row).encode())
    return digest.hexdigest()


def count(path: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as database:
        (rows,) = database.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(rows)


async def seed_file(path: Path, rows: int, token: CancellationToken) -> None:
    database = Database(f"sqlite+aiosqlite:///{path}")
    try:
        await database.create_schema(CancellationToken.NONE)
        await seed(database, rows, token)
    finally:
        await database.dispose()


def test_same_rows_same_data(tmp_path: Path) -> None:
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    asyncio.run(seed_file(first, 3000, CancellationToken.NONE))
    asyncio.run(seed_file(second, 3000, CancellationToken.NONE))

    assert fingerprint(first) == fingerprint(second)
    assert [count(first, table) for table in TABLES] == [2000, 2000, 1000, 3000]


def test_a_cancelled_seed_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "cancelled.db"

    async def cancel_midway() -> None:
        with CancellationTokenSource() as source:
            source.cancel_after(0.2)
            await seed_file(path, 2_000_000, source.token)

    with pytest.raises(OperationCancelled):
        asyncio.run(cancel_midway())  # two million rows take longer than 0.2s
    assert [count(path, table) for table in TABLES] == [0, 0, 0, 0]


def test_command_line_refuses_to_seed_twice_unless_asked(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            seed_command(url, "--rows", "2000", *extra), cwd=ROOT, capture_output=True, text=True
        )

    assert run().returncode == 0
    again = run()
    assert again.returncode == 1 and "pass --reset" in again.stderr
    skipped = run("--if-empty")
    assert skipped.returncode == 0 and "already seeded" in skipped.stderr
    reset = run("--reset")
    assert reset.returncode == 0 and "100%" in reset.stderr  # the progress bar


def test_the_health_probe_answers_while_the_pool_is_drained(tmp_path: Path) -> None:
    """A pool busy with slow work is not a database that is down: the probe does not queue."""

    async def main() -> float:
        database = Database(f"sqlite+aiosqlite:///{tmp_path / 'busy.db'}", pool_size=1)
        held = [await database.engine.connect() for _ in range(2)]  # pool_size + max_overflow
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait_for(database.ping(CancellationToken.NONE), timeout=5)
            return loop.time() - started
        finally:
            for connection in held:
                await connection.close()
            await database.dispose()

    assert asyncio.run(main()) < 5


def test_a_seed_reports_each_tenth_of_its_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's first start logs these: minutes of silence would look like a hang."""
    monkeypatch.setattr("app.seed.BATCH", 3000)  # ten batches of sales, as 800,000 rows make 16
    reports: list[tuple[int, int]] = []

    async def main() -> None:
        database = Database(f"sqlite+aiosqlite:///{tmp_path / 'progress.db'}")
        try:
            await database.create_schema(CancellationToken.NONE)
            await seed(
                database, 30_000, CancellationToken.NONE, on_tenth=lambda *r: reports.append(r)
            )
        finally:
            await database.dispose()

    asyncio.run(main())

    tenths = [10 * done // total for done, total in reports]
    assert tenths == sorted(set(tenths)) and len(tenths) >= 8  # each report a new tenth, in order
    assert reports[-1][0] == reports[-1][1]  # the last one is the whole of it
