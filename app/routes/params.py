"""Parsing query parameters and bodies into values, with messages a client can act on.

Parsing is the handler's job (the services take typed values), and every failure here is the
client's to fix: 422 for a value that does not make sense, 400 for a body that is not JSON.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from services import InvalidInput

from ..problems import BadRequest

__all__ = ["date_param", "int_param", "json_body", "text_param"]


def text_param(query: Mapping[str, str], name: str, *, max_length: int = 100) -> str:
    value = query.get(name, "").strip()
    if not value:
        raise _invalid(name, f"'{name}' is required")
    if len(value) > max_length:
        raise _invalid(name, f"'{name}' may be at most {max_length} characters long")
    return value


def int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _invalid(name, f"'{name}' must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise _invalid(name, f"'{name}' must be between {low} and {high}, not {value}")
    return value


def date_param(query: Mapping[str, str], name: str) -> dt.date | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise _invalid(name, f"'{name}' must be a date like 2025-01-31, not {raw!r}") from None


async def json_body(request: Request) -> Any:
    """The decoded JSON body; 400 with the parser's own words if it is not JSON."""
    body = await request.body()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def _invalid(name: str, message: str) -> InvalidInput:
    return InvalidInput(message, [{"field": name, "message": message}])
