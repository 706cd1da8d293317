"""A unit of work: the repositories of one session, and the commit that makes their writes stick.

Services decide where a transaction begins and ends; repositories only run statements. The commit
lives here, behind a method that takes a token like every other, so the service can choose which
token the point of no return runs under (see ``OrdersService.place``).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from request_aborted import CancellationToken
from request_aborted.sqlalchemy import cancellable

from .customers import CustomerRepository
from .orders import OrderRepository, StockRepository
from .products import ProductRepository
from .sales import SalesRepository
from .summaries import SummaryRepository

__all__ = ["UnitOfWork"]


class UnitOfWork:
    """The repositories sharing one session; nothing is kept unless ``commit`` runs."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self.customers = CustomerRepository(session)
        self.products = ProductRepository(session)
        self.orders = OrderRepository(session)
        self.stock = StockRepository(session)
        self.sales = SalesRepository(session)
        self.summaries = SummaryRepository(session)

    async def commit(self, token: CancellationToken) -> None:
        """Commit the session's transaction; refused (and rolled back) if ``token`` fired first."""
        async with cancellable(self._session, token):
            await self._session.commit()
