"""``DEMO_DEBUG=1``: a record of what the server did, for the end-to-end tests to read.

Off by default and never needed to run the demo. When on, it records, with ``time.monotonic()``
stamps (system-wide on Linux, so a test can compare them with its own clock):

* ``request.started`` / ``request.finished`` around every HTTP request,
* ``request.aborted`` from the middleware's ``on_abort`` hook, with the reason,
* ``sql.started`` / ``sql.finished`` / ``sql.failed`` for every statement, from engine events.

Each event carries the request's path and the client's port (a benchmark tells its clients apart
by it). They are served at ``GET /debug/events``; ``DELETE /debug/events`` empties the list. The
record is a ring of ``DEFAULT_CAPACITY`` events: once full, the oldest go, so memory stays bounded
however long the process runs.

``GET /debug/internals`` shows what a leak would leave behind: pooled database connections checked
out, httpx pool slots in use, asyncio tasks, open file descriptors by kind, resident memory, and
how many requests are still in flight. It reads the pools it was handed (no heap walk, no forced
collection): about a millisecond of CPU, not the quarter second ``gc.get_objects()`` cost.

Every ``/debug/`` path answers only clients on the loopback interface (``scope["client"]``, which
uvicorn rewrites from ``X-Forwarded-For`` for a proxy it trusts): anyone else gets the 404 of a
route that does not exist, whatever interface the server binds.

It never touches the request's token: observing the token would switch on the disconnect watching
it is meant to report on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import time
from collections import Counter, deque
from contextvars import ContextVar
from typing import Any

import httpcore
from sqlalchemy import event
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.pool import QueuePool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["DEFAULT_CAPACITY", "DebugEvents", "DebugMiddleware"]

DEFAULT_CAPACITY = 20_000
"""Events kept (about 10 MB); a test reads what it needs long before the ring turns over."""

_path: ContextVar[str] = ContextVar("demo.debug.path", default="")
_client: ContextVar[int | None] = ContextVar("demo.debug.client", default=None)


class DebugEvents:
    """The last ``capacity`` events, and a running count of each kind."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.counts: Counter[str] = Counter()
        """``request.started``, ``request.finished``... and ``outcome:<name>``; never emptied."""
        self._engine: Engine | None = None
        self._http: list[Any] = []

    def record(self, name: str, path: str | None = None, **details: Any) -> None:
        self.counts[name] += 1
        if "outcome" in details:
            self.counts[f"outcome:{details['outcome']}"] += 1
        self.events.append(
            {
                "event": name,
                "path": _path.get() if path is None else path,
                "client": _client.get(),
                "at": time.monotonic(),
                **details,
            }
        )

    def on_abort(self, scope: Scope, reason: BaseException, elapsed: float) -> None:
        """An ``on_abort`` hook: the request's token fired."""
        self.record(
            "request.aborted", scope.get("path", ""), reason=type(reason).__name__, elapsed=elapsed
        )

    def watch(self, engine: Engine) -> None:
        """Record every statement ``engine`` runs, with the path of the request that ran it.

        The engine is kept too, for ``/debug/internals`` to read its pool.
        """
        self._engine = engine

        def started(*_: object) -> None:
            self.record("sql.started")

        def finished(*_: object) -> None:
            self.record("sql.finished")

        def failed(context: ExceptionContext) -> None:
            self.record("sql.failed", error=type(context.original_exception).__name__)

        event.listen(engine, "before_cursor_execute", started)
        event.listen(engine, "after_cursor_execute", finished)
        event.listen(engine, "handle_error", failed)

    def watch_http(self, transport: Any) -> None:
        """Show the connection pool of ``transport`` (an ``httpx.AsyncHTTPTransport``)."""
        self._http.append(transport)

    async def endpoint(self, request: Request) -> JSONResponse:
        """``GET /debug/events``"""
        return JSONResponse(list(self.events))

    def internals(self) -> dict[str, Any]:
        """What ``GET /debug/internals`` shows; numbers a leak would push up and keep up."""
        started, finished = self.counts["request.started"], self.counts["request.finished"]
        return {
            "pid": os.getpid(),
            "requests": {
                "started": started,
                "finished": finished,
                "in_flight": started - finished,
                "aborted": self.counts["request.aborted"],
                "outcomes": {
                    key.removeprefix("outcome:"): n
                    for key, n in sorted(self.counts.items())
                    if key.startswith("outcome:")
                },
            },
            "db_pool": _db_pool(self._engine),
            "http_pools": [_http_pool(pool) for pool in map(_pool_of, self._http) if pool],
            "tasks": _tasks(),
            "fds": _file_descriptors(),
            "rss_bytes": _rss(),
        }


def _db_pool(engine: Engine | None) -> dict[str, int] | None:
    pool = None if engine is None else engine.pool
    if not isinstance(pool, QueuePool):
        return None
    return {
        "size": pool.size(),
        "checked_out": pool.checkedout(),
        "checked_in": pool.checkedin(),
        "overflow": max(0, pool.overflow()),
    }


def _pool_of(transport: Any) -> httpcore.AsyncConnectionPool | None:
    # httpx keeps its httpcore pool private; a debug view may look, the demo never relies on it.
    pool = getattr(transport, "_pool", None)
    return pool if isinstance(pool, httpcore.AsyncConnectionPool) else None


def _http_pool(pool: httpcore.AsyncConnectionPool) -> dict[str, Any]:
    """Connections by state, and the requests the pool still tracks: a leaked slot shows in both.

    ``info()`` reads ``"HTTP/1.1, IDLE, Request Count: 3"``, ``"CONNECTING"``...
    """
    connections = list(pool.connections)
    states = Counter(_connection_state(connection.info()) for connection in connections)
    requests = list(getattr(pool, "_requests", ()))
    return {
        "connections": len(connections),
        "states": dict(sorted(states.items())),
        "busy": sum(1 for connection in connections if not connection.is_idle()),
        "requests": len(requests),
        "queued": sum(1 for request in requests if request.is_queued()),
    }


def _connection_state(info: str) -> str:
    parts = [part.strip() for part in info.split(",")]
    pairs = itertools.pairwise(parts)
    return next((state for part, state in pairs if part.startswith("HTTP/")), parts[0])


def _tasks() -> dict[str, Any]:
    names = Counter(_coroutine_name(task) for task in asyncio.all_tasks())
    return {"count": sum(names.values()), "by_coroutine": dict(sorted(names.items()))}


def _coroutine_name(task: asyncio.Task[Any]) -> str:
    coroutine = task.get_coro()
    return getattr(coroutine, "__qualname__", type(coroutine).__name__)


def _file_descriptors() -> dict[str, Any]:
    """Open descriptors by kind; regular files also by path (a pooled SQLite connection holds
    the database and its WAL files open); sockets also by peer (``inbound:<our port>``, or the
    remote address)."""
    kinds: Counter[str] = Counter()
    files: Counter[str] = Counter()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # not Linux: nothing to show
        return {"total": None}
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the descriptor listdir used, already closed
            continue
        if ":" in target:
            kinds[target.split(":")[0]] += 1
        else:
            kinds["file"] += 1
            files[target] += 1
    return {"total": sum(kinds.values()), "by_kind": dict(sorted(kinds.items())),
            "files": dict(sorted(files.items())), "sockets": _sockets()}  # fmt: skip


def _sockets() -> dict[str, Any] | None:
    try:
        import psutil  # a test dependency: the demo itself does not need it
    except ImportError:
        return None
    connections = psutil.Process().net_connections(kind="inet")
    listening = {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}
    peers: Counter[str] = Counter()
    for c in connections:
        if c.status == psutil.CONN_LISTEN:
            peers["listening"] += 1
        elif c.laddr and c.laddr.port in listening:
            peers[f"inbound:{c.laddr.port}"] += 1
        elif c.raddr:
            peers[f"{c.raddr.ip}:{c.raddr.port}"] += 1
        else:
            peers["unconnected"] += 1
    return dict(sorted(peers.items()))


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


class DebugMiddleware:
    """Records the start and end of each HTTP request; sits inside ``RequestAbortedMiddleware``."""

    def __init__(self, app: ASGIApp, *, events: DebugEvents) -> None:
        self.app = app
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith("/debug/"):
            # Answered here rather than routed: the route table stays the demo's own.
            if not _is_loopback(scope.get("client")):
                await _NOT_FOUND(scope, receive, send)
                return
            response = self._debug_response(scope["method"], scope["path"])
            await (self.app if response is None else response)(scope, receive, send)
            return
        reset = _path.set(scope["path"])
        client = scope.get("client")
        reset_client = _client.set(client[1] if client else None)  # the peer's port
        self.events.record("request.started")
        outcome = "returned"
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self.events.record("request.finished", outcome=outcome)
            _client.reset(reset_client)
            _path.reset(reset)

    def _debug_response(self, method: str, path: str) -> Response | None:
        if path == "/debug/internals" and method == "GET":
            return JSONResponse(self.events.internals())
        if path == "/debug/events" and method == "DELETE":
            self.events.events.clear()  # the counts stay: they are what a soak compares
            return Response(status_code=204)
        return None


def _is_loopback(client: Any) -> bool:
    if not client:
        return False
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:  # a unix socket's path, or a test client's "testclient"
        return False


_NOT_FOUND = JSONResponse(
    {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no such route"},
    status_code=404,
    media_type="application/problem+json",
)
