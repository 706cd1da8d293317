"""Reports: an expensive query, then CPU work in chunks, both stopped by the request's token.

The query stops on the database server when the token fires (the repository binds it). The
summary that follows is plain Python; it checks the token between categories and yields to the
event loop, so a client that leaves during the crunching frees the worker within one chunk.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from repositories import EXPORT_COLUMNS, DailySales, Database, ExportRow
from request_aborted import CancellationToken

from .errors import InvalidInput, NotFound
from .statistics import CategorySummary, summarise

# The repository's row types are part of the reports' results: handlers see them from here.
__all__ = ["EXPORT_COLUMNS", "REPORTS", "DailySales", "Period", "ReportsService", "SalesReport"]

REPORTS = ("sales",)
DEFAULT_DAYS = 90


@dataclass(frozen=True, slots=True)
class Period:
    """The days a report covers, both ends included."""

    first: dt.date
    last: dt.date


@dataclass(frozen=True, slots=True)
class SalesReport:
    name: str
    period: Period
    rows: list[DailySales]
    categories: list[CategorySummary]


class ReportsService:
    """Runs and exports the named reports."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def period(
        self, name: str, first: dt.date | None, last: dt.date | None, token: CancellationToken
    ) -> Period:
        """Check the report name and resolve the period; by default the last 90 days of data."""
        if name not in REPORTS:
            raise NotFound(f"there is no report named {name!r}; available: {', '.join(REPORTS)}")
        if first is None or last is None:
            async with self._database.unit_of_work() as uow:
                known = await uow.sales.date_range(token)
            end = last or (known[1] if known else dt.date.today())
            first = first or end - dt.timedelta(days=DEFAULT_DAYS - 1)
            last = end
        if first > last:
            raise InvalidInput(
                f"the period is empty: from ({first}) is after to ({last})",
                [{"field": "from", "message": "must not be after 'to'"}],
            )
        return Period(first, last)

    async def sales(self, period: Period, token: CancellationToken) -> SalesReport:
        """Daily sales by category, plus a summary per category."""
        async with self._database.unit_of_work() as uow:
            rows = await uow.sales.daily(period.first, period.last, token)
        categories = await self._summarise(rows, token)
        return SalesReport("sales", period, rows, categories)

    async def export(
        self, period: Period, token: CancellationToken
    ) -> AsyncGenerator[list[ExportRow], None]:
        """The period's sales, batch by batch, for as long as the caller keeps reading.

        Close it (``contextlib.aclosing``) in the task that reads it: the cursor and session
        are then released right there, not whenever the garbage collector gets to them.
        """
        async with (
            self._database.unit_of_work() as uow,
            aclosing(uow.sales.export(period.first, period.last, token)) as batches,
        ):
            async for batch in batches:
                yield batch

    async def _summarise(
        self, rows: list[DailySales], token: CancellationToken
    ) -> list[CategorySummary]:
        by_category: dict[str, list[DailySales]] = defaultdict(list)
        for row in rows:
            by_category[row.category].append(row)
        summaries = []
        for category, days in sorted(by_category.items()):
            # One chunk per category: a few milliseconds of CPU, then the token and the loop.
            token.raise_if_cancellation_requested()
            summaries.append(
                summarise(
                    category,
                    [day.revenue_cents for day in days],
                    [day.returning_revenue_cents for day in days],
                    sum(day.new_customers for day in days),
                )
            )
            await asyncio.sleep(0)
        return summaries
