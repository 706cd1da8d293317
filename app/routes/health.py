"""``GET /healthz``: 200 when the database and the upstream answer, 503 otherwise."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from request_aborted import CancellationToken

from ..container import services

__all__ = ["healthz"]


async def healthz(request: Request, token: CancellationToken) -> JSONResponse:
    health = await services(request).health.check(token)
    pool = health.pool
    return JSONResponse(
        {
            "status": "ok" if health.ok else "degraded",
            "database": health.database,
            "upstream": health.upstream,
            "pool": {"size": pool.size, "in_use": pool.checked_out, "overflow": pool.overflow},
        },
        status_code=200 if health.ok else 503,
    )
