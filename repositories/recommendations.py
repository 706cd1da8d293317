"""The recommendations upstream, reached over HTTP: a repository whose storage is another service.

The token goes with every request (``extensions={"token": token}``), and the client is built by
``request_aborted.httpx.cancellable_client``. When the token fires, the call stops and its socket
is shut down, so the upstream - which runs ``RequestAbortedMiddleware`` too - sees its own client
leave and stops its own work: cancellation crosses the process boundary. A token with a deadline
also sends the time left downstream (``x-request-timeout-ms``), which the upstream honours.
"""

from __future__ import annotations

from typing import Any

import httpx

from request_aborted import CancellationToken

__all__ = ["RecommendationsClient", "RecommendationsUnavailable"]


class RecommendationsUnavailable(Exception):
    """Raised when the upstream cannot be reached or answers with an error."""


class RecommendationsClient:
    """``GET /recommendations`` on the upstream, through the application's shared client.

    ``http`` must come from ``cancellable_client`` (or use its ``CancellableTransport``): a
    plain ``httpx.AsyncClient`` ignores the token in the request's extensions.
    """

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def recommend(self, text: str, limit: int, token: CancellationToken) -> list[str]:
        """SKUs the upstream recommends for ``text``, best first."""
        body = await self._get("/recommendations", {"q": text, "limit": limit}, token)
        return [str(item["sku"]) for item in body["items"]]

    async def ping(self, token: CancellationToken) -> None:
        """Raise ``RecommendationsUnavailable`` unless the upstream answers its health check."""
        await self._get("/healthz", {}, token)

    async def _get(self, path: str, params: dict[str, Any], token: CancellationToken) -> Any:
        try:
            response = await self._http.get(path, params=params, extensions={"token": token})
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise RecommendationsUnavailable(f"recommendations upstream: {exc!r}") from exc
