"""The sales fact table: the expensive ``sales`` report query and the streamed CSV export.

The report asks, per day and category, how much was sold and how much of it came from customers
buying for the first time. "First time ever" needs every customer's whole history, so the query
ranks all sales up to the end of the period with window functions: a full scan and a sort that no
index can shortcut. That is the point of the demo: seconds of database work that should stop the
moment nobody is waiting for the answer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import cast

from sqlalchemy import case, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from request_aborted import CancellationToken
from request_aborted.sqlalchemy import cancellable

from .models import Product, Sale

__all__ = ["DailySales", "ExportRow", "SalesRepository"]

ExportRow = tuple[dt.date, str, str, str, int, int, int]
"""``(sold_on, sku, category, region, customer_id, quantity, amount_cents)``"""

EXPORT_COLUMNS = ("sold_on", "sku", "category", "region", "customer_id", "quantity", "amount_cents")


@dataclass(frozen=True, slots=True)
class DailySales:
    """One day of one category in the ``sales`` report."""

    day: dt.date
    category: str
    sales: int
    revenue_cents: int
    customers: int
    new_customers: int
    returning_revenue_cents: int
    avg_lifetime_cents: float
    revenue_7d_avg_cents: float


class SalesRepository:
    """Reads ``sales`` within one session."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def date_range(self, token: CancellationToken) -> tuple[dt.date, dt.date] | None:
        """First and last day with sales (index-only), or ``None`` for an empty table."""
        statement = select(func.min(Sale.sold_on), func.max(Sale.sold_on))
        async with cancellable(self._session, token):
            first, last = (await self._session.execute(statement)).one()
        if first is None or last is None:
            return None
        return _as_date(first), _as_date(last)

    async def daily(
        self, first: dt.date, last: dt.date, token: CancellationToken
    ) -> list[DailySales]:
        """The ``sales`` report's rows for ``first``..``last`` (inclusive), by day and category."""
        order = (Sale.sold_on, Sale.id)
        history = (
            select(
                Sale.sold_on,
                Product.category,
                Sale.customer_id,
                Sale.amount_cents,
                func.row_number().over(partition_by=Sale.customer_id, order_by=order).label("nth"),
                func.sum(Sale.amount_cents)
                .over(partition_by=Sale.customer_id, order_by=order, rows=(None, 0))
                .label("lifetime_cents"),
            )
            .join(Product, Product.id == Sale.product_id)
            .where(Sale.sold_on <= last)
            .cte("history")
        )
        h = history.c
        daily = (
            select(
                h.sold_on.label("day"),
                h.category,
                func.count().label("sales"),
                func.sum(h.amount_cents).label("revenue_cents"),
                func.count(distinct(h.customer_id)).label("customers"),
                func.sum(case((h.nth == 1, 1), else_=0)).label("new_customers"),
                func.sum(case((h.nth > 1, h.amount_cents), else_=0)).label("returning_cents"),
                func.avg(h.lifetime_cents).label("avg_lifetime_cents"),
            )
            .where(h.sold_on >= first)
            .group_by(h.sold_on, h.category)
            .cte("daily")
        )
        d = daily.c
        statement = select(
            d.day,
            d.category,
            d.sales,
            d.revenue_cents,
            d.customers,
            d.new_customers,
            d.returning_cents,
            d.avg_lifetime_cents,
            func.avg(d.revenue_cents)
            .over(partition_by=d.category, order_by=d.day, rows=(-6, 0))
            .label("revenue_7d_avg_cents"),
        ).order_by(d.day, d.category)
        async with cancellable(self._session, token):
            rows = (await self._session.execute(statement)).tuples().all()
        return [
            DailySales(
                day=_as_date(day),
                category=category,
                sales=int(sales),
                revenue_cents=int(revenue),
                customers=int(customers),
                new_customers=int(new),
                returning_revenue_cents=int(returning),
                avg_lifetime_cents=float(lifetime),
                revenue_7d_avg_cents=float(average),
            )
            for day, category, sales, revenue, customers, new, returning, lifetime, average in rows
        ]

    async def export(
        self, first: dt.date, last: dt.date, token: CancellationToken
    ) -> AsyncGenerator[list[ExportRow], None]:
        """Stream the period's sales in batches from a server-side cursor.

        Only one batch is in memory at a time, and the cursor advances only as fast as the caller
        consumes: when the caller stops (the client left), the next fetch is refused, the cursor
        is closed and nothing more is read.
        """
        statement = (
            select(
                Sale.sold_on,
                Product.sku,
                Product.category,
                Sale.region,
                Sale.customer_id,
                Sale.quantity,
                Sale.amount_cents,
            )
            .join(Product, Product.id == Sale.product_id)
            .where(Sale.sold_on >= first, Sale.sold_on <= last)
            .order_by(Sale.sold_on, Sale.id)
            .execution_options(yield_per=2000)
        )
        async with cancellable(self._session, token):
            result = await self._session.stream(statement)
            async for partition in result.partitions():
                yield cast(list[ExportRow], [tuple(row) for row in partition])  # one per batch


def _as_date(value: dt.date | str) -> dt.date:
    # SQLite hands back aggregated dates (MIN, window outputs) as text.
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)
