"""The recommendations service: a separate little app the demo calls over HTTP.

It runs the same ``RequestAbortedMiddleware`` as the demo, so when the demo abandons a call (its
own client left) the upstream's token fires too and it logs its own ``aborted`` line: the proof
that cancellation crossed the process boundary.
"""

from __future__ import annotations

from .app import create_upstream as create_upstream
from .server import EmbeddedServer as EmbeddedServer

__all__ = ["EmbeddedServer", "create_upstream"]
