"""``GET /stats``: the search page's live panel, as JSON (``LiveStats.snapshot()``).

The page polls it twice a second; it reads counters in memory, so there is nothing to cancel.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from request_aborted import CancellationToken

from ..container import services

__all__ = ["stats"]


async def stats(request: Request, _token: CancellationToken) -> JSONResponse:
    snapshot = services(request).live.snapshot()
    return JSONResponse(snapshot, headers={"cache-control": "no-store"})
