"""What ``GET /debug/internals`` shows: the numbers a leak would push up and keep up.

Pooled database connections checked out, httpx pool slots in use, asyncio tasks by coroutine,
open descriptors by kind (regular files by path, sockets by peer) and resident memory. It reads
only the pools the lifespan hands it and ``/proc``: no heap walk, no forced collection, no
traceback.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpcore
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

__all__ = ["Internals"]


class Internals:
    """The app's engine and HTTP transports (``httpx.AsyncHTTPTransport``), as seen from outside."""

    def __init__(self, engine: Engine | None, transports: Sequence[Any]) -> None:
        self._engine = engine
        self._transports = tuple(transports)

    def snapshot(self) -> dict[str, Any]:
        return {
            "db_pool": _db_pool(self._engine),
            "http_pools": [_http_pool(pool) for pool in map(_pool_of, self._transports) if pool],
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
        import psutil  # type: ignore[import-untyped]  # a test dependency, not the demo's
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
