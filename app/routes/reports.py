"""``GET /reports/{name}`` (JSON) and ``GET /reports/{name}/export`` (streamed CSV)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncGenerator
from contextlib import aclosing

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from request_aborted import CancellationToken, request_timeout
from services import EXPORT_COLUMNS, CategorySummary, DailySales, Period

from ..container import Services, services
from .params import date_param
from .streaming import ClosingStreamingResponse

__all__ = ["export", "report"]


@request_timeout("reports")
async def report(request: Request, name: str, token: CancellationToken) -> JSONResponse:
    app = services(request)
    first = date_param(request.query_params, "from")
    last = date_param(request.query_params, "to")
    period = await app.reports.period(name, first, last, token)
    result = await app.reports.sales(period, token)
    app.metrics.reports.labels(name).inc()
    return JSONResponse(
        {
            "report": result.name,
            "from": period.first.isoformat(),
            "to": period.last.isoformat(),
            "categories": [_summary(summary) for summary in result.categories],
            "rows": [_row(row) for row in result.rows],
        }
    )


@request_timeout("transfers")
async def export(request: Request, name: str, token: CancellationToken) -> Response:
    app = services(request)
    first = date_param(request.query_params, "from")
    last = date_param(request.query_params, "to")
    # Validate before the first byte: once the 200 is out, an error can only cut the body short.
    period = await app.reports.period(name, first, last, token)
    filename = f"{name}-{period.first}-{period.last}.csv"
    chunks = _csv(app, name, period, token)
    try:
        # Acquire before starting: the first chunk takes a pooled connection and runs the query,
        # so an exhausted pool or a database that is down is still a 503 problem (with
        # Retry-After) here, and not a 200 followed by a broken body and a traceback.
        opening = await anext(chunks)
    except BaseException:
        await chunks.aclose()
        raise
    return ClosingStreamingResponse(
        chunks,
        first=opening,
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


async def _csv(
    app: Services, name: str, period: Period, token: CancellationToken
) -> AsyncGenerator[bytes, None]:
    """The CSV, header row first; the first chunk holds the first batch (or is the whole file)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    async with aclosing(app.reports.export(period, token)) as batches:
        async for batch in batches:
            writer.writerows(batch)
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
            app.metrics.export_rows.labels(name).inc(len(batch))
    if buffer.tell():  # no rows at all: the header row alone
        yield buffer.getvalue().encode()


def _row(row: DailySales) -> dict[str, object]:
    return {
        "day": row.day.isoformat(),
        "category": row.category,
        "sales": row.sales,
        "revenue": row.revenue_cents / 100,
        "customers": row.customers,
        "new_customers": row.new_customers,
        "returning_revenue": row.returning_revenue_cents / 100,
        "avg_lifetime_value": round(row.avg_lifetime_cents / 100, 2),
        "revenue_7d_avg": round(row.revenue_7d_avg_cents / 100, 2),
    }


def _summary(summary: CategorySummary) -> dict[str, object]:
    low, high = summary.mean_daily_ci95
    return {
        "category": summary.category,
        "days": summary.days,
        "revenue": summary.revenue_cents / 100,
        "new_customers": summary.new_customers,
        "returning_share": round(summary.returning_share, 4),
        "trend_per_day": round(summary.trend_cents_per_day / 100, 2),
        "mean_daily_revenue": round(summary.mean_daily_cents / 100, 2),
        "mean_daily_revenue_ci95": [round(low / 100, 2), round(high / 100, 2)],
    }
