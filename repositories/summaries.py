"""``report_summaries``: the latest finished report, stored by the background refresh."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from request_aborted import CancellationToken
from request_aborted.sqlalchemy import cancellable

from .models import ReportSummary

__all__ = ["SummaryRepository"]


class SummaryRepository:
    """Writes ``report_summaries`` within one session."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def replace(
        self,
        report: str,
        first: dt.date,
        last: dt.date,
        row_count: int,
        payload: str,
        token: CancellationToken,
    ) -> None:
        """Stage the new summary of ``report`` in place of the old ones (the caller commits)."""
        async with cancellable(self._session, token):
            await self._session.execute(delete(ReportSummary).where(ReportSummary.report == report))
            self._session.add(
                ReportSummary(
                    report=report,
                    period_from=first,
                    period_to=last,
                    row_count=row_count,
                    payload=payload,
                )
            )
            await self._session.flush()
