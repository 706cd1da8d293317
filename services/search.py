"""Product search with recommendations: one request, two kinds of I/O, one token.

The database query gets the request's token as it is. The upstream call gets a *tighter* budget,
linked to the request's token: if the recommender is slow the search still answers (without
recommendations) in time, and if the client leaves both stop at once. Telling the two apart -
"my own timeout" versus "the request is over" - is the one place cancellation is caught here.
"""

from __future__ import annotations

from dataclasses import dataclass

from repositories import Database, ProductHit, RecommendationsClient, RecommendationsUnavailable
from request_aborted import CancellationToken, CancellationTokenSource, OperationCancelled

__all__ = ["ProductHit", "SearchResult", "SearchService"]  # ProductHit: part of the result


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Matching products, and recommendations unless the upstream could not give them in time."""

    query: str
    products: list[ProductHit]
    recommendations: list[ProductHit] | None
    fallback_reason: str | None = None


class SearchService:
    """Searches the catalogue and asks the upstream what else to show."""

    def __init__(
        self,
        database: Database,
        recommendations: RecommendationsClient,
        *,
        recommendations_timeout: float,
    ) -> None:
        self._database = database
        self._recommendations = recommendations
        self._recommendations_timeout = recommendations_timeout

    async def search(self, text: str, limit: int, token: CancellationToken) -> SearchResult:
        # Two short units of work rather than one long one: no pooled connection is held
        # while the upstream thinks.
        async with self._database.unit_of_work() as uow:
            products = await uow.products.search(text, limit, token)
        skus, fallback = await self._recommend(text, limit, token)
        if skus is None:
            return SearchResult(text, products, None, fallback)
        async with self._database.unit_of_work() as uow:
            recommended = await uow.products.by_skus(skus, token)
        return SearchResult(text, products, recommended)

    async def _recommend(
        self, text: str, limit: int, token: CancellationToken
    ) -> tuple[list[str] | None, str | None]:
        """The upstream's SKUs, or ``(None, why)`` when it failed or ran out of its budget."""
        with CancellationTokenSource.linked(token, timeout=self._recommendations_timeout) as budget:
            try:
                return await self._recommendations.recommend(text, limit, budget.token), None
            except OperationCancelled:  # deliberate: only our own budget is absorbed here
                if token.is_cancellation_requested:
                    raise  # the request itself is over: nobody wants the search either
                return None, "timeout"
            except RecommendationsUnavailable:
                return None, "unavailable"
