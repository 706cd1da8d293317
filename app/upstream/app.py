"""``GET /recommendations?q=``: deterministic SKUs after a realistic think time.

The think time (50-150 ms by default) is awaited inside ``token.scope()``: a caller that hangs up
ends it at once, which is what a real model server or search cluster behind this endpoint would
want too. Run it alone with ``uvicorn app.upstream.main:app --port 8001``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from request_aborted import CancellationToken, RequestAbortedMiddleware, inject

__all__ = ["create_upstream"]

CATALOGUE_SIZE = 2000  # the seed's product count: SKU-00001 .. SKU-02000
MAX_LIMIT = 20


def create_upstream(latency_ms: tuple[float, float] = (50.0, 150.0)) -> Starlette:
    """The recommendations app, thinking between ``latency_ms[0]`` and ``[1]`` ms per call."""
    low, high = latency_ms
    rng = random.Random()

    @inject
    async def recommendations(request: Request, token: CancellationToken) -> JSONResponse:
        text = request.query_params.get("q", "")
        try:
            limit = min(MAX_LIMIT, max(1, int(request.query_params.get("limit", "5"))))
        except ValueError:
            return JSONResponse({"detail": "limit must be a whole number"}, status_code=422)
        async with token.scope():
            await asyncio.sleep(rng.uniform(low, high) / 1000)
        return JSONResponse({"query": text, "items": _recommend(text, limit)})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/recommendations", recommendations), Route("/healthz", healthz)],
        # The demo sends its remaining budget along; there is no point thinking past it.
        middleware=[
            Middleware(
                RequestAbortedMiddleware, timeout=5.0, deadline_headers=["x-request-timeout-ms"]
            )
        ],
    )


def _recommend(text: str, limit: int) -> list[dict[str, object]]:
    """The same query always gets the same SKUs: stable enough to test, varied enough to demo."""
    seed = int.from_bytes(hashlib.sha256(text.lower().encode()).digest()[:8], "big")
    picks = random.Random(seed).sample(range(1, CATALOGUE_SIZE + 1), limit)
    return [
        {"sku": f"SKU-{number:05d}", "score": round(1 - rank / (limit + 1), 3)}
        for rank, number in enumerate(picks)
    ]
