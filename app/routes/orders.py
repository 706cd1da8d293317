"""``POST /orders``: ``{"customer_id": 1, "items": [{"product_id": 7, "quantity": 2}]}``."""

from __future__ import annotations

from typing import Any, TypeGuard

from starlette.requests import Request
from starlette.responses import JSONResponse

from request_aborted import CancellationToken
from services import InvalidInput, LineRequest

from ..container import services
from .params import json_body

__all__ = ["place_order"]


async def place_order(request: Request, token: CancellationToken) -> JSONResponse:
    customer_id, basket = _parse(await json_body(request))
    app = services(request)
    order = await app.orders.place(customer_id, basket, token)
    app.metrics.orders.inc()
    return JSONResponse(
        {
            "id": order.id,
            "customer_id": order.customer_id,
            "items": [
                {
                    "product_id": line.product_id,
                    "quantity": line.quantity,
                    "unit_price": line.unit_price_cents / 100,
                }
                for line in order.lines
            ],
            "total": order.total_cents / 100,
        },
        status_code=201,
    )


def _parse(body: Any) -> tuple[int, list[LineRequest]]:
    """Check the shape of the body; every problem is listed, not just the first."""
    if not isinstance(body, dict):
        raise InvalidInput(
            "the body must be a JSON object",
            [{"field": "", "message": "expected an object with customer_id and items"}],
        )
    errors: list[dict[str, str]] = []
    customer_id = body.get("customer_id")
    if not _is_int(customer_id):
        errors.append({"field": "customer_id", "message": "required, a whole number"})
    items = body.get("items")
    basket: list[LineRequest] = []
    if not isinstance(items, list):
        errors.append({"field": "items", "message": "required, a list of {product_id, quantity}"})
        items = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append({"field": f"items[{index}]", "message": "must be an object"})
            continue
        product_id, quantity = item.get("product_id"), item.get("quantity")
        for field, value in (("product_id", product_id), ("quantity", quantity)):
            if not _is_int(value):
                errors.append(
                    {"field": f"items[{index}].{field}", "message": "required, a whole number"}
                )
        if _is_int(product_id) and _is_int(quantity):
            basket.append(LineRequest(product_id, quantity))
    if errors or not _is_int(customer_id):
        raise InvalidInput("the order is not valid", errors)
    return customer_id, basket


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
