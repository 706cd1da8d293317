"""The search page's live panel (``GET /stats``): what the aborts stopped, counted from the server.

Against real demo processes and real sockets: a statement interrupted in SQLite and an upstream
call stopped mid-flight are what the panel reports as cancelled; a call the search's own budget
ended, in a search that then answered, is not.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from ._support import Demo, named, open_request, wait_until
from .conftest import StartDemo

pytestmark = pytest.mark.e2e


def stats(demo: Demo) -> dict[str, Any]:
    found: dict[str, Any] = demo.get("/stats").json()
    return found


def settled(demo: Demo, aborted: int) -> dict[str, Any]:
    """``/stats`` once ``aborted`` requests have been counted as aborted and none is in flight."""
    seen: dict[str, Any] = {}

    def counted() -> bool:
        seen.update(stats(demo))
        requests = seen["requests"]
        return bool(requests["aborted"] >= aborted and requests["in_flight"] == 0)

    wait_until(counted, 10, f"{aborted} aborted request(s) in /stats")
    return seen


def test_an_abandoned_report_counts_its_interrupted_statement(demo_log: Demo) -> None:
    before = stats(demo_log)
    since = len(demo_log.events())
    client = open_request(demo_log.port, "GET", "/reports/sales")
    # The date-range query has finished; the report's big statement is running.
    demo_log.wait_for_event(since, lambda e: len(named(e, "/reports/sales", "sql.started")) >= 2)
    time.sleep(0.2)

    client.close()

    after = settled(demo_log, before["requests"]["aborted"] + 1)
    assert after["cancelled"]["db_statements"] == before["cancelled"]["db_statements"] + 1
    assert after["cancelled"]["outbound_calls"] == before["cancelled"]["outbound_calls"]
    reasons = after["requests"]["aborted_by_reason"]
    assert (
        reasons["ClientDisconnected"]
        == before["requests"]["aborted_by_reason"].get("ClientDisconnected", 0) + 1
    )


def test_an_abandoned_search_counts_the_upstream_call_it_stopped_not_one_its_budget_did(
    start_demo: StartDemo,
) -> None:
    # The in-process upstream thinks for 5 s; the search allows it 1.5 s.
    demo = start_demo(RECOMMENDER_LATENCY_MS="5000", RECOMMENDATIONS_TIMEOUT="1.5")

    answered = demo.get("/search", params={"q": "lamp"}).json()  # after its 1.5 s budget
    client = open_request(demo.port, "GET", "/search?q=desk")
    demo.wait_for_event(0, lambda e: len(named(e, "/search", "sql.finished")) >= 2)
    time.sleep(0.3)  # the second search's products are found; the upstream is thinking
    client.close()

    after = settled(demo, 1)
    assert answered["recommendations_missing"] == "timeout"
    assert (after["requests"]["completed"], after["requests"]["aborted"]) == (1, 1)
    assert after["cancelled"] == {"db_statements": 0, "outbound_calls": 1}
