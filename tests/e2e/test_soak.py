"""Reliability soak, sized for CI: 2,000 requests, about half of the clients vanishing.

The demo runs on PostgreSQL with a small pool (``DB_POOL_SIZE=3``: three connections and three
overflow for twenty concurrent clients) and calls the recommendations upstream in a process of its
own. ``bench/bench_soak.py`` plays the clients - raw asyncio sockets, a fixed seed, vanishing while
sending headers, mid-body, during the query, during the upstream call or mid-stream, by FIN or by
RST - and this test states what must hold once the load is gone. The same run at 20,000 requests
is ``.venv/bin/python bench/bench_soak.py`` (results in ``bench/results/soak.md``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bench_soak import MIB, Soak, run_soak, soak_stack
from tests._fixtures.postgres import PostgresServer

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(180)]

REQUESTS = 2_000


@pytest.fixture(scope="module")
def soak(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Soak]:
    directory = tmp_path_factory.mktemp("soak")
    with soak_stack(postgres, Path(directory)) as (demo, database, upstream):
        yield run_soak(demo, database, upstream, requests=REQUESTS, concurrency=20)


def test_about_half_of_the_clients_vanished_at_every_phase(soak: Soak) -> None:
    assert 0.4 * REQUESTS < soak.vanished < 0.6 * REQUESTS
    phases = {outcome.plan.vanish for outcome in soak.outcomes if outcome.vanished}
    assert phases == {"headers", "body", "query", "upstream", "stream"}


def test_every_client_that_stayed_got_a_complete_answer(soak: Soak) -> None:
    assert [(o.plan.kind, o.plan.target, o.status, o.error) for o in soak.failed_clients] == []
    assert soak.after["requests"]["in_flight"] == 0  # every request started was finished


def test_no_database_connection_or_backend_is_left_behind(soak: Soak) -> None:
    assert soak.after["db_pool"]["checked_out"] == 0
    assert soak.app_backends == []  # none active, none idle in transaction


def test_no_httpx_pool_slot_is_left_behind(soak: Soak) -> None:
    assert soak.http_slots_in_use == 0


def test_tasks_descriptors_and_memory_are_back_to_the_warm_baseline(soak: Soak) -> None:
    assert soak.after["tasks"]["by_coroutine"] == soak.before["tasks"]["by_coroutine"]
    # Pooled connections to PostgreSQL and to the upstream come and go with the pools' own
    # policies (the pools are checked above); every other descriptor must be back.
    assert soak.descriptors_after == soak.descriptors_before
    assert soak.rss_growth < 10 * MIB


def test_no_error_line_and_no_traceback_in_either_log(soak: Soak) -> None:
    assert soak.log_errors == []


def test_every_order_is_committed_in_full_or_absent(soak: Soak) -> None:
    assert soak.orders_committed > 0
    assert soak.torn_orders == []
    assert soak.stock_mismatches == {}  # stock taken == the committed items, product by product


def test_no_partial_upload_is_left_on_disk(soak: Soak) -> None:
    assert soak.partial_uploads == []
