"""A readiness probe for load balancers and orchestrators: 503 from the first shutdown signal on.

A liveness or health check answers "is this process working?"; readiness answers "should new
requests come here?". Once shutdown began (phase 1 of ``ApplicationLifetime``) the answer is no,
while the requests already in flight still finish: a load balancer or Kubernetes that polls the
probe takes the instance out of rotation before phase 2 cuts anything. Before the lifetime has
started the answer is no as well, so an instance whose startup is not done (or whose server sends
no lifespan events at all: daphne) never receives traffic.

Mount it as a route::

    Route("/readyz", Readiness())                # the lifetime comes from the lifespan state
    Route("/readyz", Readiness(lifetime))        # or name it

The probe answers GET and HEAD with a small JSON document, never cached.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

from ._lifetime import ApplicationLifetime, lifetime_of

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send

__all__ = ["Readiness"]

NO_LIFETIME: Final = (
    "no ApplicationLifetime is running: wrap the app's lifespan with "
    "ApplicationLifetime.lifespan(), and run a server that sends lifespan events"
)


class Readiness:
    """ASGI app: 200 while the lifetime runs, 503 before it started and from phase 1 on.

    ``lifetime``: the ``ApplicationLifetime`` to report on; by default the one the middleware
    also uses, found in the request's lifespan state.
    """

    def __init__(self, lifetime: ApplicationLifetime | None = None) -> None:
        self.lifetime = lifetime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(f"Readiness answers HTTP requests, not {scope['type']!r}")
        headers = [(b"cache-control", b"no-store")]
        if scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 405, b"", [*headers, (b"allow", b"GET, HEAD")])
            return
        status, document = self.check(scope)
        body = json.dumps(document).encode()
        headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", str(len(body)).encode()))
        await _answer(send, status, b"" if scope["method"] == "HEAD" else body, headers)

    def check(self, scope: Scope) -> tuple[int, dict[str, str]]:
        """The probe's status and document for a request with ``scope``."""
        lifetime = self.lifetime if self.lifetime is not None else lifetime_of(scope)
        if lifetime is None:
            return 503, {"status": "unavailable", "detail": NO_LIFETIME}
        if lifetime.stopping.is_cancellation_requested:
            return 503, {"status": "stopping", "phase": lifetime.phase}
        if not lifetime.started.is_cancellation_requested:
            return 503, {"status": "starting", "phase": lifetime.phase}
        return 200, {"status": "ready", "phase": lifetime.phase}


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
