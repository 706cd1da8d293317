"""uvicorn's HTTP protocols, noting when the server process saw a benchmark client's socket close.

``bench_disconnect_latency.py`` starts uvicorn with ``--http _seen:HttpToolsSeen`` (or
``_seen:H11Seen``) serving ``apps:latency``: the protocol is uvicorn's own, and only its
``connection_lost`` (the event loop's callback for the peer's FIN or reset, the first moment the
server process knows the client left) first records ``time.monotonic()`` for the request the
connection was serving, in ``apps.seen_at``, when its path is one of the latency app's keyed paths.
The benchmark then has two timestamps from the same process and the same clock: *seen* (here) and
*fired* (the token's callback in ``apps.latency``).
"""

from __future__ import annotations

import time

import apps
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_KEYED = ("/wait/", "/stream/", "/raw-wait/", "/raw-stream/")


def _note(cycle: object) -> None:
    seen = time.monotonic()
    scope = getattr(cycle, "scope", None)
    if scope is None:
        return
    path: str = scope.get("path", "")
    if path.startswith(_KEYED):
        apps.seen_at.setdefault(path.rsplit("/", 1)[1], seen)


class HttpToolsSeen(HttpToolsProtocol):
    def connection_lost(self, exc: Exception | None) -> None:
        _note(self.cycle)
        super().connection_lost(exc)


class H11Seen(H11Protocol):
    def connection_lost(self, exc: Exception | None) -> None:
        _note(self.cycle)
        super().connection_lost(exc)
