"""Bulk loading for the seed: PostgreSQL's COPY where available, batched executemany elsewhere.

Millions of rows through ordinary INSERTs take minutes; COPY (asyncpg's
``copy_records_to_table``, psycopg's ``cursor.copy()``) takes seconds. SQLite has no COPY, but
driver-level ``executemany`` batches in one transaction are what it is fastest at: going through
``insert(table)`` with dictionaries costs five times as much per row in parameter processing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from request_aborted import CancellationToken
from request_aborted.sqlalchemy import cancellable

from .database import Database
from .models import Base

__all__ = ["BulkLoader", "Part", "Row"]

Row = tuple[Any, ...]
Part = tuple[Table, Sequence[str], Iterable[Sequence[Row]]]
"""A table, the columns the rows fill (in order), and the rows in batches."""


class BulkLoader:
    """Appends rows (tuples in column order) to the demo's tables and resets the schema."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def recreate_schema(self, token: CancellationToken) -> None:
        """Drop and create every demo table: the seed's ``--reset``."""
        async with self._database.engine.begin() as connection, cancellable(connection, token):
            await connection.run_sync(Base.metadata.drop_all)
            await connection.run_sync(Base.metadata.create_all)

    async def load(
        self, parts: Iterable[Part], loaded: Callable[[int], object], token: CancellationToken
    ) -> None:
        """Append every part's batches in one transaction; ``loaded(n)`` after each batch.

        One transaction, so a load is all or nothing: the token is checked between batches, and
        Ctrl-C (or a stopping host) leaves empty tables behind, never half-seeded ones.
        """
        async with self._database.engine.begin() as connection:
            for table, columns, batches in parts:
                for batch in batches:
                    await self._append(connection, table, columns, batch, token)
                    loaded(len(batch))

    async def _append(
        self,
        connection: AsyncConnection,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        token: CancellationToken,
    ) -> None:
        token.raise_if_cancellation_requested()  # COPY bypasses the statement hooks
        async with cancellable(connection, token):
            if self._database.dialect == "postgresql":
                raw = await connection.get_raw_connection()
                driver: Any = raw.driver_connection
                if hasattr(driver, "copy_records_to_table"):  # asyncpg
                    await driver.copy_records_to_table(
                        table.name, records=rows, columns=list(columns)
                    )
                    return
                names = ", ".join(columns)  # psycopg 3
                copy_sql = f"COPY {table.name} ({names}) FROM STDIN"
                async with driver.cursor() as cursor, cursor.copy(copy_sql) as copy:
                    for row in rows:
                        await copy.write_row(row)
                return
            names = ", ".join(columns)
            marks = ", ".join("?" * len(columns))
            await connection.exec_driver_sql(
                f"INSERT INTO {table.name} ({names}) VALUES ({marks})",
                [tuple(map(_sqlite_value, row)) for row in rows],
            )


def _sqlite_value(value: Any) -> Any:
    # What SQLAlchemy's Date type stores in SQLite; the driver's own date adapter is deprecated.
    return value.isoformat() if isinstance(value, dt.date) else value
