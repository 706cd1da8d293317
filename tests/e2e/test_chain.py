"""Across services: client -> demo -> recommendations upstream, each in its own uvicorn process.

Both services run ``RequestAbortedMiddleware``. When the client at the edge gives up, the demo's
token fires, its outbound call is aborted (the socket is shut down, the pool slot freed) and the
upstream, seeing its own client leave, fires *its* token and stops thinking - it says so in its
own log. And a budget travels the other way: whatever deadline the demo's request has - its own
``REQUEST_TIMEOUT``, or a shorter one its caller sent in ``x-request-timeout-ms`` or
``grpc-timeout`` - the upstream is told what is left of it (``x-request-timeout-ms``).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests._fixtures.servers import ServerProcess
from tests.demo._support import PROMPTLY, Demo, assert_quiet_abort, named, wait_until

from ._demo import (
    Curl,
    assert_clean_log,
    curls,
    deadline_headers,
    running_demo,
    running_upstream,
    sqlite_copy,
    wait_until_quiet,
)

pytestmark = pytest.mark.e2e

Chain = Callable[..., tuple[Demo, ServerProcess]]
ACROSS = 2 * PROMPTLY
"""Two processes must react in turn: the demo hangs up, then the upstream notices and stops."""


@pytest.fixture
def chain(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """``chain(latency_ms, **demo_env)`` starts the upstream, then the demo that calls it."""
    with contextlib.ExitStack() as stack:

        def start(latency_ms: str, **env: str) -> tuple[Demo, ServerProcess]:
            upstream = stack.enter_context(
                running_upstream(tmp_path / "upstream", RECOMMENDER_LATENCY_MS=latency_ms)
            )
            database = sqlite_copy(tmp_path_factory, tmp_path / "demo")
            demo = stack.enter_context(
                running_demo(tmp_path / "demo", database, RECOMMENDER_URL=upstream.base_url, **env)
            )
            return demo, upstream

        yield start


@pytest.fixture
def curl(tmp_path: Path) -> Iterator[Callable[..., Curl]]:
    with curls(tmp_path) as start:
        yield start


def test_client_abort_at_the_edge_stops_the_demo_its_call_and_the_upstream(
    chain: Chain, curl: Callable[..., Curl]
) -> None:
    demo, upstream = chain("5000", RECOMMENDATIONS_TIMEOUT="10")
    client = curl(demo.url + "/search?q=lamp", "--max-time", "1")
    demo.wait_for_event(0, lambda e: bool(named(e, "/search", "sql.finished")))
    wait_until(lambda: bool(deadline_headers(upstream)), 5, "the upstream receiving the call")

    code, left_at = client.finish()

    assert code == 28
    # The far end first, while the clock runs: the upstream's own token fired because its
    # client - the demo - hung up, and the upstream said so in its own log.
    upstream_abort = (
        r"INFO: +request_aborted: GET /recommendations aborted after [0-9.]+s: "
        r"ClientDisconnected.*\(499\)"
    )
    seen_at = wait_until(lambda: re.search(upstream_abort, upstream.log()) is not None, 5,
                         "the upstream's own abort line")  # fmt: skip
    assert seen_at - left_at < ACROSS
    # The edge: the demo's token fired, and its middleware said so in one line.
    assert_quiet_abort(demo, "GET", "/search")
    # Between them: the demo's outbound call was aborted and its pool slot is free again.
    wait_until_quiet(demo, timeout=1)
    assert_clean_log(demo.log())
    assert_clean_log(upstream.log())


def test_the_demos_own_budget_reaches_the_upstream_shorter(chain: Chain) -> None:
    demo, upstream = chain("20-30", REQUEST_TIMEOUT="3", RECOMMENDATIONS_TIMEOUT="10")

    response = demo.get("/search", params={"q": "lamp"})

    assert response.status_code == 200 and response.json()["recommendations"]
    [(header, value)] = deadline_headers(upstream)
    assert header == "x-request-timeout-ms"
    assert 2000 < int(value) < 3000  # what was left of the demo's 3 s, and never more


@pytest.mark.parametrize(
    ("header", "value"),
    [("x-request-timeout-ms", "3000"), ("grpc-timeout", "3S")],
)
def test_a_deadline_set_at_the_edge_reaches_the_upstream_shorter(
    chain: Chain, header: str, value: str
) -> None:
    demo, upstream = chain("20-30", RECOMMENDATIONS_TIMEOUT="10")  # REQUEST_TIMEOUT: 10 s

    started = time.monotonic()
    response = httpx.get(demo.url + "/search", params={"q": "lamp"}, headers={header: value})
    elapsed_ms = 1000 * (time.monotonic() - started)

    assert response.status_code == 200, response.text
    [(sent, remaining)] = deadline_headers(upstream)
    assert sent == "x-request-timeout-ms"  # the demo's client speaks the upstream's dialect
    assert 3000 - elapsed_ms - 1 <= int(remaining) < 3000  # what was left of the edge's 3 s
