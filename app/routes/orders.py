"""``POST /orders``: ``{"customer_id": 1, "items": [{"product_id": 7, "quantity": 2}]}``.

Hostile bodies are refused here, before a service or the database sees them: over
``MAX_ORDER_BYTES`` (413, counted while reading), not JSON or JSON no order needs (400, see
``params.json_body``), ids outside what the database stores (422). Quantities are the service's
business rule (1 to ``MAX_QUANTITY``), checked there.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from starlette.requests import Request
from starlette.responses import JSONResponse

from request_aborted import CancellationToken
from services import InvalidInput, LineRequest

from ..container import services
from .params import json_body

__all__ = ["MAX_ID", "MAX_ORDER_BYTES", "place_order"]

MAX_ORDER_BYTES = 256 * 1024
"""Fifty lines (the most an order may have) take about 3 KB: room for padding, not for a payload."""
MAX_ID = 2**31 - 1
"""Ids are 32-bit in every schema the demo runs on; larger ones cannot name a row."""


async def place_order(request: Request, token: CancellationToken) -> JSONResponse:
    customer_id, basket = _parse(await json_body(request, MAX_ORDER_BYTES))
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
    if not _is_id(customer_id):
        errors.append({"field": "customer_id", "message": _ID_MESSAGE})
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
        if not _is_id(product_id):
            errors.append({"field": f"items[{index}].product_id", "message": _ID_MESSAGE})
        if not _is_int(quantity):
            errors.append(
                {"field": f"items[{index}].quantity", "message": "required, a whole number"}
            )
        if _is_id(product_id) and _is_int(quantity):
            basket.append(LineRequest(product_id, quantity))
    if errors or not _is_id(customer_id):
        raise InvalidInput("the order is not valid", errors)
    return customer_id, basket


_ID_MESSAGE = f"required, a whole number from 1 to {MAX_ID}"


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: object) -> TypeGuard[int]:
    return _is_int(value) and 1 <= value <= MAX_ID
