"""Parsing query parameters and bodies into values, with messages a client can act on.

Parsing is the handler's job (the services take typed values), and every failure here is the
client's to fix: 422 for a value that does not make sense, 400 for a body that is not JSON (or is
JSON no order needs: nested deeper than ``MAX_JSON_DEPTH``, numbers longer than
``MAX_NUMBER_CHARS``), 413 for a body over its limit. The limits are checked while the body is
read, before the parser sees it: memory stays bounded whatever the client sends, and Python's
parser never meets the inputs that make it raise ``RecursionError`` (deep nesting) or
``ValueError`` from deep inside ``int()`` (4,300+ digits).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from starlette.requests import Request

from services import InvalidInput, PayloadTooLarge

from ..problems import BadRequest

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_NUMBER_CHARS",
    "date_param",
    "int_param",
    "json_body",
    "read_body",
    "text_param",
]

MAX_JSON_DEPTH = 32
"""Objects and arrays nested deeper than this are refused (400) before parsing."""
MAX_NUMBER_CHARS = 32
"""A JSON number longer than this (sign, digits, fraction, exponent) is refused (400)."""


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


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 the moment it passes ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused before a byte is read; a chunked body
    is counted as it arrives, so at most ``max_bytes`` plus one chunk is ever held.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, max_bytes: int) -> Any:
    """The decoded JSON body; 413 past ``max_bytes``, 400 if it is not JSON an API would take."""
    body = await read_body(request, max_bytes)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    depth = _nesting_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_refuse_constant,
        )
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise BadRequest(f"the body has a number longer than {MAX_NUMBER_CHARS} characters")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise BadRequest(f"the body has a number longer than {MAX_NUMBER_CHARS} characters")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BadRequest(f"the body has a number out of range: {text}")
    return value


def _refuse_constant(text: str) -> NoReturn:
    raise BadRequest(f"the body is not valid JSON: {text} is not a JSON number")


# The only characters that matter for nesting: quotes open and close strings (a "[" inside one is
# not nesting), escapes hide the quote they escape, brackets nest.
_STRUCTURE = re.compile(r'\\.|["\[\]{}]', re.DOTALL)


def _nesting_depth(text: str) -> int:
    """The deepest nesting of objects and arrays, counted in one pass, without recursion.

    Malformed input may miscount; the parser refuses it then, and only well-formed input that is
    shallow enough ever reaches the parser.
    """
    depth = deepest = 0
    in_string = False
    for match in _STRUCTURE.finditer(text):
        char = match.group()
        if char == '"':
            in_string = not in_string
        elif in_string or len(char) == 2:
            continue
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def _too_large(max_bytes: int) -> NoReturn:
    raise PayloadTooLarge(f"the body is limited to {max_bytes} bytes")


def _invalid(name: str, message: str) -> InvalidInput:
    return InvalidInput(message, [{"field": name, "message": message}])
