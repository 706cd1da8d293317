"""``DataSyncService``: keeps the stored sales summary fresh, and stops the moment it is told to.

A background service is where "graceful shutdown is boring until a service refuses to stop" bites.
This one takes its ``stopping_token`` everywhere the request handlers take theirs: the wait between
refreshes, the report query (stopped on the database server), the CPU summary, and the write, whose
commit alone is a point of no return with a short grace period.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging

from repositories import Database
from request_aborted import BackgroundService, CancellationToken

from .reports import Period, ReportsService, SalesReport

__all__ = ["DataSyncService"]

logger = logging.getLogger("app.data_sync")

SUMMARY_DAYS = 7
COMMIT_GRACE = 2.0


class DataSyncService(BackgroundService):
    """Every ``interval`` seconds, re-run the last week's ``sales`` report and store it."""

    stop_timeout = 5.0
    stop_host_on_error = False  # a failed refresh is retried at the next interval

    def __init__(self, reports: ReportsService, database: Database, *, interval: float) -> None:
        self._reports = reports
        self._database = database
        self._interval = interval

    async def execute(self, stopping_token: CancellationToken) -> None:
        while True:
            async with stopping_token.scope():
                await asyncio.sleep(self._interval)
            try:
                await self.refresh(stopping_token)
            except Exception as error:  # the database may be restarting: try again next time
                logger.warning("sales summary refresh failed, retrying in %gs: %r",
                               self._interval, error)  # fmt: skip

    async def refresh(self, token: CancellationToken) -> SalesReport:
        """Recompute the summary and replace the stored one."""
        recent = await self._reports.period("sales", None, None, token)
        first = max(recent.first, recent.last - dt.timedelta(days=SUMMARY_DAYS - 1))
        report = await self._reports.sales(Period(first, recent.last), token)
        payload = json.dumps(
            [
                {"category": summary.category, "revenue_cents": summary.revenue_cents}
                for summary in report.categories
            ]
        )
        async with self._database.unit_of_work() as uow:
            await uow.summaries.replace(
                "sales", report.period.first, report.period.last, len(report.rows), payload, token
            )
            token.raise_if_cancellation_requested()
            async with token.critical_section(grace=COMMIT_GRACE) as commit_token:
                await uow.commit(commit_token)
        logger.info("sales summary refreshed for %s..%s", report.period.first, report.period.last)
        return report
