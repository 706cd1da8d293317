"""Writing an order: the order row, its lines, and the stock they take.

Nothing here commits. The statements join the session's transaction, and the service decides
whether it is committed (see ``UnitOfWork.commit``); an order cancelled half-way leaves nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncSession

from request_aborted import CancellationToken
from request_aborted.sqlalchemy import cancellable

from .models import Order, OrderItem, Stock

__all__ = ["OrderLine", "OrderRepository", "StockRepository"]


@dataclass(frozen=True, slots=True)
class OrderLine:
    """One line of an order, priced at the moment it is placed."""

    product_id: int
    quantity: int
    unit_price_cents: int


class OrderRepository:
    """Inserts into ``orders`` and ``order_items`` within one session."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(
        self, customer_id: int, lines: Sequence[OrderLine], token: CancellationToken
    ) -> int:
        """Insert the order and its lines; return the new order's id (visible once committed)."""
        total = sum(line.quantity * line.unit_price_cents for line in lines)
        async with cancellable(self._session, token):
            order_id: int | None = await self._session.scalar(
                insert(Order)
                .values(customer_id=customer_id, status="placed", total_cents=total)
                .returning(Order.id)
            )
            assert order_id is not None
            await self._session.execute(
                insert(OrderItem),
                [
                    {
                        "order_id": order_id,
                        "product_id": line.product_id,
                        "quantity": line.quantity,
                        "unit_price_cents": line.unit_price_cents,
                    }
                    for line in lines
                ],
            )
        return order_id


class StockRepository:
    """Updates ``stock`` within one session."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def take(self, product_id: int, quantity: int, token: CancellationToken) -> bool:
        """Take ``quantity`` off the shelf; ``False`` (and nothing changed) if too few are left.

        One conditional UPDATE, so two orders racing for the last item cannot both win: the
        second waits for the first's row lock and then finds too little.
        """
        statement = (
            update(Stock)
            .where(Stock.product_id == product_id, Stock.quantity >= quantity)
            .values(quantity=Stock.quantity - quantity)
        )
        async with cancellable(self._session, token):
            result = await self._session.execute(statement)
        return bool(result.rowcount)  # type: ignore[attr-defined]
