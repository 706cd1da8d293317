"""Reliability soak, mode 2, sized for CI: 800 connections, 200 open at a time, half abandoned.

The demo as ``uvicorn app.main:app`` runs it on the embedded default (SQLite, recommendations
upstream in-process). ``bench/bench_soak.py --mode abandon`` plays the clients: single requests,
keep-alive sequences and pipelined batches, uploads up to 8 MB, oversized orders, ``/metrics``
reads; about half the connections are abandoned at a random phase (while sending the headers,
mid-body, waiting for the answer, after the response headers, mid-response), by FIN or by RST.
This test states what must hold once the load is gone. The full run (10,000 connections) is in
BENCHMARKS.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.bench_soak import MIB, AbandonSoak, abandon_stack, run_abandon_soak

from ._demo import sqlite_copy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CONNECTIONS = 800


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AbandonSoak]:
    directory = tmp_path_factory.mktemp("soak-abandon")
    database = sqlite_copy(tmp_path_factory, directory)
    with abandon_stack(directory, database) as demo:
        yield run_abandon_soak(demo, database, connections=CONNECTIONS, concurrency=200)


def test_about_half_of_the_connections_were_abandoned_at_every_phase(soak: AbandonSoak) -> None:
    assert 0.4 * CONNECTIONS < soak.abandoned < 0.6 * CONNECTIONS
    phases = {connection.vanish for connection in soak.connections if connection.vanish}
    assert phases == {"headers", "body", "waiting", "after-headers", "response"}
    styles = {connection.style for connection in soak.connections}
    assert styles == {"single", "keep-alive", "pipelined"}


def test_every_client_that_stayed_got_a_complete_answer(soak: AbandonSoak) -> None:
    assert [(o.plan.kind, o.plan.target, o.status, o.error) for o in soak.failed_clients] == []
    assert soak.after["requests"]["in_flight"] == 0  # every request started was finished


def test_no_pooled_connection_or_slot_is_left_behind(soak: AbandonSoak) -> None:
    assert soak.after["db_pool"]["checked_out"] == 0
    assert soak.http_slots_in_use == 0
    # SQLite keeps the descriptor of a connection closed while another one holds a lock (in WAL
    # mode every open connection does) until no lock is left, and reuses it for the next open:
    # the pool's churn parks a bounded number of them. A descriptor per abandoned request would
    # exceed the bound by far: 3 files (database, WAL, shared memory) per connection the pool
    # may hold (its size, and as many again in overflow).
    growth = soak.database_descriptors_after - soak.database_descriptors_before
    assert growth <= 3 * 2 * soak.after["db_pool"]["size"], (
        soak.database_descriptors_before,
        soak.database_descriptors_after,
    )


def test_tasks_descriptors_and_memory_are_back_to_the_warm_baseline(soak: AbandonSoak) -> None:
    assert soak.after["tasks"]["by_coroutine"] == soak.before["tasks"]["by_coroutine"]
    assert soak.descriptors_after == soak.descriptors_before
    assert soak.rss_growth < 32 * MIB


def test_no_error_line_and_no_traceback_in_the_log(soak: AbandonSoak) -> None:
    # uvicorn's own line for pipelined batches abandoned on uvloop is counted apart (see
    # bench_soak.UVLOOP_PIPELINING): it is uvicorn's defect (docs/hazards.md, row 34).
    assert soak.log_errors == []


def test_every_order_is_committed_in_full_or_absent(soak: AbandonSoak) -> None:
    assert soak.orders_committed > 0
    assert soak.torn_orders == []
    assert soak.stock_mismatches == {}


def test_no_partial_upload_is_left_on_disk(soak: AbandonSoak) -> None:
    assert soak.partial_uploads == []
