"""Placing an order: one transaction, and a deliberate point after which the token is ignored.

Up to the commit, a client that leaves (or a deadline that passes) stops the work and the
transaction is rolled back: no order, no items, no stock taken. The commit is the point of no
return: the token is checked one last time, then the commit runs in a critical section, so a
client leaving *during* the commit cannot interrupt it half-way - the order is either committed
or not, and the server knows which. The grace period bounds how long a stuck commit may outlive
the request that asked for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from repositories import Database, OrderLine
from request_aborted import CancellationToken

from .errors import Conflict, InvalidInput

__all__ = ["LineRequest", "OrdersService", "PlacedOrder"]

MAX_LINES = 50
MAX_QUANTITY = 100


@dataclass(frozen=True, slots=True)
class LineRequest:
    product_id: int
    quantity: int


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    id: int
    customer_id: int
    lines: list[OrderLine]
    total_cents: int


class OrdersService:
    """Turns a customer's basket into an order, all or nothing."""

    def __init__(self, database: Database, *, commit_grace: float) -> None:
        self._database = database
        self._commit_grace = commit_grace

    async def place(
        self, customer_id: int, basket: list[LineRequest], token: CancellationToken
    ) -> PlacedOrder:
        _check_basket(basket)
        async with self._database.unit_of_work() as uow:
            if not await uow.customers.exists(customer_id, token):
                raise InvalidInput(
                    f"there is no customer {customer_id}",
                    [{"field": "customer_id", "message": "unknown customer"}],
                )
            prices = await uow.products.prices({line.product_id for line in basket}, token)
            unknown = sorted({line.product_id for line in basket} - prices.keys())
            if unknown:
                raise InvalidInput(
                    f"unknown product ids: {unknown}",
                    [{"field": "items", "message": f"unknown product {p}"} for p in unknown],
                )
            lines = [
                OrderLine(line.product_id, line.quantity, prices[line.product_id])
                for line in basket
            ]
            order_id = await uow.orders.add(customer_id, lines, token)
            for line in lines:
                if not await uow.stock.take(line.product_id, line.quantity, token):
                    raise Conflict(f"not enough stock of product {line.product_id}")

            # The last exit: after this check the order will be committed, client or no client.
            token.raise_if_cancellation_requested()
            async with token.critical_section(grace=self._commit_grace) as commit_token:
                await uow.commit(commit_token)
        total = sum(line.quantity * line.unit_price_cents for line in lines)
        return PlacedOrder(order_id, customer_id, lines, total)


def _check_basket(basket: list[LineRequest]) -> None:
    """Reject what no database round trip can fix: empty baskets, silly quantities."""
    if not basket:
        raise InvalidInput(
            "an order needs at least one item",
            [{"field": "items", "message": "must not be empty"}],
        )
    if len(basket) > MAX_LINES:
        raise InvalidInput(
            f"an order has at most {MAX_LINES} items",
            [{"field": "items", "message": f"at most {MAX_LINES} items"}],
        )
    errors = [
        {"field": f"items[{i}].quantity", "message": f"must be between 1 and {MAX_QUANTITY}"}
        for i, line in enumerate(basket)
        if not 1 <= line.quantity <= MAX_QUANTITY
    ]
    if errors:
        raise InvalidInput("some quantities are out of range", errors)
    if len({line.product_id for line in basket}) != len(basket):
        raise InvalidInput(
            "each product may appear once per order",
            [{"field": "items", "message": "duplicate product_id"}],
        )
