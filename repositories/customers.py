"""Customer look-ups an order needs before it may be placed."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from request_aborted import CancellationToken
from request_aborted.sqlalchemy import cancellable

from .models import Customer

__all__ = ["CustomerRepository"]


class CustomerRepository:
    """Reads ``customers`` within one session."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def exists(self, customer_id: int, token: CancellationToken) -> bool:
        statement = select(Customer.id).where(Customer.id == customer_id)
        async with cancellable(self._session, token):
            found = await self._session.scalar(statement)
        return found is not None
