"""``DEMO_DEBUG=1``: a record of what the server did, for the end-to-end tests to read.

Off by default and never needed to run the demo. When on, it records, with ``time.monotonic()``
stamps (system-wide on Linux, so a test can compare them with its own clock):

* ``request.started`` / ``request.finished`` around every HTTP request,
* ``request.aborted`` from the middleware's ``on_abort`` hook, with the reason,
* ``sql.started`` / ``sql.finished`` / ``sql.failed`` for every statement of the app's engine.

Each event carries the request's path and the client's port (a benchmark tells its clients apart
by it). They are served at ``GET /debug/events``; ``DELETE /debug/events`` empties the list. The
record is a ring of ``DEFAULT_CAPACITY`` events: once full, the oldest go, so memory stays bounded
however long the process runs.

``GET /debug/internals`` shows what a leak would leave behind: pooled database connections checked
out, httpx pool slots in use, asyncio tasks, open file descriptors by kind, resident memory, and
how many requests are still in flight. It reads the pools the lifespan handed it (no heap walk, no
forced collection): about a millisecond of CPU.

Every ``/debug/`` path answers only clients on the loopback interface (``scope["client"]``, which
uvicorn rewrites from ``X-Forwarded-For`` for a proxy it trusts): anyone else gets the 404 of a
route that does not exist, whatever interface the server binds.

It never touches the request's token: observing the token would switch on the disconnect watching
it is meant to report on. One job per module: ``events`` records, ``internals`` reads the
process's resources, ``routes`` serves both.
"""

from __future__ import annotations

from .events import DEFAULT_CAPACITY as DEFAULT_CAPACITY
from .events import DebugEvents as DebugEvents
from .events import DebugMiddleware as DebugMiddleware
from .internals import Internals as Internals
from .routes import INTERNALS_STATE as INTERNALS_STATE
from .routes import debug_routes as debug_routes

__all__ = [
    "DEFAULT_CAPACITY",
    "INTERNALS_STATE",
    "DebugEvents",
    "DebugMiddleware",
    "Internals",
    "debug_routes",
]
