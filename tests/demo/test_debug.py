"""``DEMO_DEBUG=1``: loopback clients only, bounded in memory, cheap to read.

The debug endpoints used to answer anyone on whatever interface uvicorn bound, let anyone clear
the record, grow it without limit, and walk the whole heap (0.26 s of CPU) on every
``/debug/internals``. They are routes now, mounted behind a loopback-only gate.
"""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.types import Message

from app.debug import DebugEvents, Internals, debug_routes

from ._support import Demo


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_client_through_a_proxy_gets_no_debug_endpoint(demo_log: Demo) -> None:
    # uvicorn trusts X-Forwarded-For from 127.0.0.1: the scope's client is the proxied one.
    outside = {"X-Forwarded-For": "203.0.113.7"}
    events = demo_log.get("/debug/events", headers=outside)
    internals = demo_log.get("/debug/internals", headers=outside)
    cleared = demo_log.post("/debug/events", headers=outside)  # any method
    deleted = httpx.delete(demo_log.url + "/debug/events", headers=outside, timeout=10)

    assert [r.status_code for r in (events, internals, cleared, deleted)] == [404] * 4
    assert events.headers["content-type"] == "application/problem+json"
    assert demo_log.get("/debug/events").status_code == 200  # the loopback client still may


def test_internals_cost_milliseconds_of_cpu_not_a_heap_walk(demo_log: Demo) -> None:
    pid = demo_log.server.process.pid
    demo_log.get("/debug/internals").raise_for_status()
    calls = 20
    before = cpu_seconds(pid)
    for _ in range(calls):
        seen = demo_log.get("/debug/internals").json()
    per_call = (cpu_seconds(pid) - before) / calls

    assert seen["db_pool"]["checked_out"] == 0
    assert len(seen["http_pools"]) == 1  # the upstream client's pool, handed over, not searched
    # 78 ms before (a heap walk and a forced collection); about 12 ms now, most of it psutil
    # reading the system's socket table, which other processes' connections make longer.
    assert per_call < 0.1, f"{per_call * 1000:.1f} ms of CPU per call"


def test_internals_neither_collect_nor_walk_the_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_: object) -> None:
        raise AssertionError("a heap walk or a forced collection on every /debug/internals")

    monkeypatch.setattr(gc, "get_objects", forbidden)
    monkeypatch.setattr(gc, "collect", forbidden)

    async def read() -> dict[str, object]:
        return Internals(None, []).snapshot()

    seen: dict[str, Any] = asyncio.run(read())

    assert seen["tasks"]["count"] == 1  # read() itself
    assert seen["http_pools"] == []  # none handed over


def test_the_event_record_is_a_ring_and_the_counts_go_on() -> None:
    events = DebugEvents(capacity=3)
    for index in range(5):
        events.record("request.started", path=f"/{index}")

    assert [event["path"] for event in events.events] == ["/2", "/3", "/4"]
    assert events.counts["request.started"] == 5


@pytest.mark.parametrize(
    ("client", "allowed"),
    [
        (("127.0.0.1", 5000), True),
        (("127.8.9.10", 5000), True),
        (("::1", 5000), True),
        (("10.0.0.5", 5000), False),
        (("::ffff:203.0.113.7", 5000), False),
        (None, False),
        (("testclient", 50000), False),
    ],
)
def test_debug_paths_answer_loopback_clients_only(client: object, allowed: bool) -> None:
    sent: list[Message] = []
    events = DebugEvents()
    events.record("request.started", path="/search")

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "DELETE", "path": "/debug/events", "client": client,
             "headers": [], "query_string": b""}  # fmt: skip
    asyncio.run(Starlette(routes=debug_routes(events))(scope, receive, send))
    assert sent[0]["status"] == (204 if allowed else 404)
    assert len(events.events) == (0 if allowed else 1)  # only loopback clients may clear
