"""``GET /search?q=&limit=``: products and recommendations."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from request_aborted import CancellationToken
from services import ProductHit

from ..container import services
from .params import int_param, text_param

__all__ = ["search"]


async def search(request: Request, token: CancellationToken) -> JSONResponse:
    text = text_param(request.query_params, "q")
    limit = int_param(request.query_params, "limit", default=10, low=1, high=50)
    app = services(request)
    result = await app.search.search(text, limit, token)
    if result.fallback_reason is not None:
        app.metrics.recommendation_fallbacks.labels(result.fallback_reason).inc()
    recommendations = result.recommendations
    return JSONResponse(
        {
            "query": result.query,
            "products": [_product(hit) for hit in result.products],
            "recommendations": (
                None if recommendations is None else [_product(hit) for hit in recommendations]
            ),
            "recommendations_missing": result.fallback_reason,
        }
    )


def _product(hit: ProductHit) -> dict[str, object]:
    return {
        "id": hit.id,
        "sku": hit.sku,
        "name": hit.name,
        "category": hit.category,
        "price": hit.price_cents / 100,
        "in_stock": hit.in_stock,
    }
