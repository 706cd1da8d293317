"""``POST /uploads``: the raw body, streamed to disk (``curl --data-binary @file``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from request_aborted import CancellationToken, request_timeout

from ..container import services
from ..problems import BadRequest

__all__ = ["upload"]


@request_timeout("transfers")
async def upload(request: Request, token: CancellationToken) -> JSONResponse:
    app = services(request)
    stored = await app.uploads.save(_body(request, token), _content_length(request), token)
    app.metrics.upload_bytes.inc(stored.size)
    return JSONResponse(
        {"id": stored.id, "size": stored.size, "sha256": stored.sha256},
        status_code=201,
    )


async def _body(request: Request, token: CancellationToken) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        # Starlette's way of saying what the token already knows; let the token say why.
        token.raise_if_cancellation_requested()
        raise


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"Content-Length must be a whole number, not {raw!r}") from None
