"""Errors as RFC 9457 problem documents (``application/problem+json``), never a bare 500.

Bad input is the client's to fix, so it gets a 4xx that says what to fix. A cancelled request is
none of this module's business: ``OperationCancelled`` is a ``BaseException``, passes every handler
here untouched and is answered by the middleware (499, 504 or 503).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from request_aborted import OperationCancelled, request_aborted
from services import (
    Conflict,
    DatabaseUnavailable,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServiceError,
)

__all__ = ["EXCEPTION_HANDLERS", "BadRequest", "problem"]

logger = logging.getLogger("app")

_STATUS: Mapping[type[ServiceError], int] = {
    NotFound: 404,
    InvalidInput: 422,
    Conflict: 409,
    PayloadTooLarge: 413,
}


class BadRequest(ServiceError):
    """Raised by a handler when the request cannot even be parsed (malformed JSON): 400."""


class ProblemResponse(JSONResponse):
    media_type = "application/problem+json"


def problem(status: int, detail: str, **extra: Any) -> Response:
    """A problem document; ``extra`` members (``errors=[...]``) are added as they are."""
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    return ProblemResponse(body, status_code=status)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    status = 400 if isinstance(exc, BadRequest) else _STATUS.get(type(exc), 400)
    if isinstance(exc, InvalidInput) and exc.errors:
        return problem(status, exc.detail, errors=exc.errors)
    response = problem(status, exc.detail)
    if isinstance(exc, PayloadTooLarge):
        # The rest of the body is unread: closing beats reading (and discarding) megabytes more
        # only to keep a connection the client has shown it would misuse.
        response.headers["connection"] = "close"
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail
    if exc.status_code == 404 and detail == HTTPStatus(404).phrase:
        detail = f"no route for {request.method} {request.url.path}"
    response = problem(exc.status_code, detail)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unavailable(request: Request, exc: Exception) -> Response:
    """The database is down, restarting or saturated: the client may retry; nothing is broken.

    Which driver errors mean that is the repositories' business (``DatabaseUnavailable``).
    Registered per exception class, so Starlette answers it from ``ExceptionMiddleware`` and
    does not re-raise it to the server (as it does for the catch-all ``Exception`` handler).
    """
    _raise_if_fallout(request, exc)
    logger.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
    response = problem(503, "the database is unavailable right now; try again shortly")
    response.headers["retry-after"] = "1"
    return response


def _raise_if_fallout(request: Request, exc: Exception) -> None:
    token = request_aborted(request)
    if token.is_cancellation_requested:
        # Fallout of the cancellation (Starlette's ClientDisconnect while reading the body, say),
        # not a bug: hand the middleware the reason, and it logs its one line.
        raise OperationCancelled(token.reason or exc) from exc


async def _unexpected(request: Request, exc: Exception) -> Response:
    _raise_if_fallout(request, exc)
    # A bug, not bad input: keep the traceback in the log, not in the client's face.
    logger.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "the server hit an unexpected error; it has been logged")


EXCEPTION_HANDLERS: Mapping[Any, Any] = {
    ServiceError: _service_error,
    HTTPException: _http_error,
    DatabaseUnavailable: _unavailable,
    Exception: _unexpected,  # any other driver error too: a bug
}
