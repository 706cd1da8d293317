"""Product look-ups: the search box, the recommendations' SKUs, and the prices an order locks in."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from request_aborted import CancellationToken
from request_aborted.sqlalchemy import cancellable

from .models import Product, Stock

__all__ = ["ProductHit", "ProductRepository"]


@dataclass(frozen=True, slots=True)
class ProductHit:
    """A product as the search results show it, with what is left in stock."""

    id: int
    sku: str
    name: str
    category: str
    price_cents: int
    in_stock: int


class ProductRepository:
    """Reads ``products`` (and ``stock`` beside it) within one session."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def search(self, text: str, limit: int, token: CancellationToken) -> list[ProductHit]:
        """Products whose name or category contains ``text`` (case-insensitive), cheapest first."""
        needle = text.lower()
        statement = (
            _hits()
            .where(
                func.lower(Product.name).contains(needle, autoescape=True)
                | func.lower(Product.category).contains(needle, autoescape=True)
            )
            .order_by(Product.price_cents, Product.id)
            .limit(limit)
        )
        async with cancellable(self._session, token):
            rows = await self._session.execute(statement)
        return [ProductHit(*row) for row in rows]

    async def by_skus(self, skus: Collection[str], token: CancellationToken) -> list[ProductHit]:
        """The products behind ``skus``, in the order given; unknown SKUs are skipped."""
        if not skus:
            return []
        async with cancellable(self._session, token):
            rows = await self._session.execute(_hits().where(Product.sku.in_(list(skus))))
        found = {hit.sku: hit for hit in (ProductHit(*row) for row in rows)}
        return [found[sku] for sku in skus if sku in found]

    async def prices(
        self, product_ids: Collection[int], token: CancellationToken
    ) -> dict[int, int]:
        """Current price in cents of each known product among ``product_ids``."""
        statement = select(Product.id, Product.price_cents).where(Product.id.in_(product_ids))
        async with cancellable(self._session, token):
            rows = await self._session.execute(statement)
        return {product_id: price for product_id, price in rows.tuples()}


def _hits() -> Select[int, str, str, str, int, int]:
    return select(
        Product.id,
        Product.sku,
        Product.name,
        Product.category,
        Product.price_cents,
        func.coalesce(Stock.quantity, 0),
    ).outerjoin(Stock, Stock.product_id == Product.id)
