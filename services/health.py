"""Is the demo fit to serve? The database and the upstream each get a short, linked budget.

A health probe must answer quickly even when a dependency hangs, and must stop probing when
the prober gives up: hence a linked source per check, closed with ``with``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from repositories import Database, PoolStatus, RecommendationsClient
from request_aborted import CancellationToken, CancellationTokenSource, OperationCancelled

__all__ = ["Health", "HealthService"]

Ping = Callable[[CancellationToken], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Health:
    database: str
    upstream: str
    pool: PoolStatus

    @property
    def ok(self) -> bool:
        return self.database == "ok" and self.upstream == "ok"


class HealthService:
    """Probes the database and the recommendations upstream, each within ``PROBE_TIMEOUT``."""

    PROBE_TIMEOUT: Final = 2.0

    def __init__(self, database: Database, upstream: RecommendationsClient) -> None:
        self._database = database
        self._upstream = upstream

    async def check(self, token: CancellationToken) -> Health:
        database = await self._probe(self._database.ping, token)
        upstream = await self._probe(self._upstream.ping, token)
        return Health(database, upstream, self._database.pool_status())

    async def _probe(self, ping: Ping, token: CancellationToken) -> str:
        """``"ok"``, ``"timeout"`` or ``"error: ..."``; re-raises if the request itself ended."""
        with CancellationTokenSource.linked(token, timeout=self.PROBE_TIMEOUT) as budget:
            try:
                await ping(budget.token)
            except OperationCancelled:  # deliberate: our own budget, not the request's
                if token.is_cancellation_requested:
                    raise
                return "timeout"
            except Exception as exc:
                return f"error: {type(exc).__name__}"
        return "ok"
