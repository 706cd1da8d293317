"""Every endpoint's happy path, and bad input answered with a clear 4xx problem, never a 500.

All against one demo process (uvicorn + httptools, SQLite seeded at the default size, the
recommendations upstream started in-process), the way ``scripts/demo`` runs it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import sqlite3

import httpx
import pytest

from services import EXPORT_COLUMNS

from ._support import Demo, assert_no_traceback, open_request, read_response

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, detail_contains: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert detail_contains in body["detail"], body


def test_search_returns_products_and_recommendations(demo_log: Demo) -> None:
    response = demo_log.get("/search", params={"q": "lamp", "limit": 5})

    assert response.status_code == 200
    body = response.json()
    assert body["query"] == "lamp"
    assert 0 < len(body["products"]) <= 5
    assert all("lamp" in p["name"].lower() for p in body["products"])
    prices = [p["price"] for p in body["products"]]
    assert prices == sorted(prices)
    assert len(body["recommendations"]) == 5  # the upstream answered within its budget
    assert body["recommendations_missing"] is None


def test_search_is_deterministic(demo_log: Demo) -> None:
    first = demo_log.get("/search", params={"q": "mug"}).json()
    second = demo_log.get("/search", params={"q": "mug"}).json()
    assert first["recommendations"] == second["recommendations"]


def test_sales_report_for_a_period(demo_log: Demo) -> None:
    response = demo_log.get("/reports/sales", params={"from": "2025-12-01", "to": "2025-12-07"})

    assert response.status_code == 200
    body = response.json()
    assert (body["report"], body["from"], body["to"]) == ("sales", "2025-12-01", "2025-12-07")
    assert len(body["categories"]) == 20
    assert {row["day"] for row in body["rows"]} == {f"2025-12-0{d}" for d in range(1, 8)}
    row = body["rows"][0]
    assert row["sales"] > 0 and row["revenue"] > 0 and row["customers"] > 0
    summary = body["categories"][0]
    low, high = summary["mean_daily_revenue_ci95"]
    assert low <= summary["mean_daily_revenue"] <= high


def test_export_streams_csv(demo_log: Demo) -> None:
    response = demo_log.get("/reports/sales/export", params={"from": "2025-12-31"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert "sales-2025-12-31-2025-12-31.csv" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) > 500
    assert {row["sold_on"] for row in rows} == {"2025-12-31"}
    assert rows[0]["sku"].startswith("SKU-")


def test_export_of_a_period_without_sales_is_the_header_row(demo_log: Demo) -> None:
    response = demo_log.get(
        "/reports/sales/export", params={"from": "1990-01-01", "to": "1990-01-02"}
    )

    assert response.status_code == 200
    assert response.text.splitlines() == [",".join(EXPORT_COLUMNS)]


def test_order_is_placed_and_takes_stock(demo_log: Demo, shop_db: sqlite3.Connection) -> None:
    (before,) = shop_db.execute("SELECT quantity FROM stock WHERE product_id = 11").fetchone()

    response = demo_log.post(
        "/orders", json={"customer_id": 3, "items": [{"product_id": 11, "quantity": 2}]}
    )

    assert response.status_code == 201, response.text
    order = response.json()
    assert order["items"][0]["quantity"] == 2
    assert order["total"] == round(2 * order["items"][0]["unit_price"], 2)
    (after,) = shop_db.execute("SELECT quantity FROM stock WHERE product_id = 11").fetchone()
    assert after == before - 2
    (items,) = shop_db.execute(
        "SELECT count(*) FROM order_items WHERE order_id = ?", (order["id"],)
    ).fetchone()
    assert items == 1


def test_order_beyond_stock_is_a_conflict_and_changes_nothing(
    demo_log: Demo, shop_db: sqlite3.Connection
) -> None:
    (orders_before,) = shop_db.execute("SELECT count(*) FROM orders").fetchone()
    items = [{"product_id": p, "quantity": 100} for p in range(100, 115)]

    response = demo_log.post("/orders", json={"customer_id": 4, "items": items})

    assert_problem(response, 409, "not enough stock")
    (orders_after,) = shop_db.execute("SELECT count(*) FROM orders").fetchone()
    assert orders_after == orders_before


def test_upload_is_stored_whole(demo_log: Demo) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB

    response = demo_log.post("/uploads", content=payload)

    assert response.status_code == 201, response.text
    stored = response.json()
    assert stored["size"] == len(payload)
    assert stored["sha256"] == hashlib.sha256(payload).hexdigest()
    assert (demo_log.upload_dir / stored["id"]).read_bytes() == payload
    assert not list(demo_log.upload_dir.glob("*.part"))


def test_healthz_reports_database_upstream_and_pool(demo_log: Demo) -> None:
    response = demo_log.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == body["database"] == body["upstream"] == "ok"
    assert body["pool"]["size"] == 5
    assert body["pool"]["in_use"] == 0  # every earlier request gave its connection back


def test_metrics_exposes_abort_hook_and_demo_counters(demo_log: Demo) -> None:
    demo_log.get("/reports/sales", params={"from": "2025-12-31", "to": "2025-12-31"})

    response = demo_log.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'demo_reports_generated_total{report="sales"}' in text
    for name in ("demo_requests_aborted_total", "demo_request_abort_stop_seconds",
                 "demo_orders_placed_total", "demo_upload_bytes_total"):  # fmt: skip
        assert f"# TYPE {name.removesuffix('_total')}" in text, name


# -- bad input: a clear 4xx problem, never a 500 ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "status", "detail"),
    [
        ("/reports/nope", {}, 404, "there is no report named 'nope'; available: sales"),
        ("/reports/sales", {"from": "yesterday"}, 422, "'from' must be a date like 2025-01-31"),
        ("/reports/sales", {"to": "2025-13-01"}, 422, "'to' must be a date"),
        ("/reports/sales", {"from": "2025-02-01", "to": "2025-01-01"}, 422, "the period is empty"),
        ("/reports/nope/export", {}, 404, "there is no report named 'nope'"),
        ("/reports/sales/export", {"from": "2025-1-1"}, 422, "'from' must be a date"),
        ("/search", {}, 422, "'q' is required"),
        ("/search", {"q": "mug", "limit": "many"}, 422, "'limit' must be a whole number"),
        ("/search", {"q": "mug", "limit": "500"}, 422, "'limit' must be between 1 and 50"),
        ("/no/such/page", {}, 404, "no route for GET /no/such/page"),
    ],
)
def test_bad_query_is_a_clear_problem(
    demo_log: Demo, path: str, params: dict[str, str], status: int, detail: str
) -> None:
    assert_problem(demo_log.get(path, params=params), status, detail)
    assert_no_traceback(demo_log.log())


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b'{"customer_id": 1, "items": [', 400, "the body is not valid JSON"),
        (b"\xff\xfe", 400, "the body is not valid JSON"),
        (b"[1, 2]", 422, "the body must be a JSON object"),
        (b'{"items": []}', 422, "the order is not valid"),
        (b'{"customer_id": 1, "items": []}', 422, "at least one item"),
        (b'{"customer_id": 1, "items": [{"product_id": 1, "quantity": 0}]}', 422, "quantities"),
        (b'{"customer_id": 1, "items": [{"product_id": 99999, "quantity": 1}]}', 422, "99999"),
        (b'{"customer_id": 99999999, "items": [{"product_id": 1, "quantity": 1}]}', 422,
         "no customer 99999999"),
        (b'{"customer_id": true, "items": [{"product_id": 1, "quantity": 1}]}', 422, "not valid"),
        # Hostile: what made the parser or the database raise (500 and a traceback) before.
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested deeper than 32 levels"),
        (b'{"customer_id": 1, "items": [{"product_id": ' + b"7" * 5000 + b', "quantity": 1}]}',
         400, "a number longer than 32 characters"),
        (b'{"customer_id": 1e999, "items": []}', 400, "out of range"),
        (b'{"customer_id": NaN, "items": []}', 400, "NaN is not a JSON number"),
        (b'{"customer_id": 1, "items": [{"product_id": 9223372036854775808, "quantity": 1}]}',
         422, "not valid"),
        (b'{"customer_id": -1, "items": [{"product_id": 0, "quantity": 1}]}', 422, "not valid"),
        (b'{"customer_id": 1, "items": [{"product_id": 1, "quantity": 100000000000000000000}]}',
         422, "quantities"),
        (b'{"customer_id": 1, "note": "' + b"[" * 1000 + b'", "items": []}', 422, "at least one"),
    ],
)  # fmt: skip
def test_bad_order_is_a_clear_problem(
    demo_log: Demo, body: bytes, status: int, detail: str
) -> None:
    response = demo_log.post("/orders", content=body, headers={"content-type": "application/json"})
    assert_problem(response, status, detail)
    assert_no_traceback(demo_log.log())


def test_order_validation_lists_every_problem(demo_log: Demo) -> None:
    response = demo_log.post("/orders", json={"customer_id": "x", "items": [{}, 3]})

    assert_problem(response, 422, "the order is not valid")
    fields = [error["field"] for error in response.json()["errors"]]
    assert fields == ["customer_id", "items[0].product_id", "items[0].quantity", "items[1]"]


def test_order_ids_out_of_range_name_their_fields(demo_log: Demo) -> None:
    body = {"customer_id": 2**31, "items": [{"product_id": 0, "quantity": 1}]}
    response = demo_log.post("/orders", json=body)

    assert_problem(response, 422, "the order is not valid")
    fields = [error["field"] for error in response.json()["errors"]]
    assert fields == ["customer_id", "items[0].product_id"]
    assert "from 1 to 2147483647" in response.json()["errors"][0]["message"]


def test_order_body_over_its_limit_is_refused_and_the_connection_closed(demo_log: Demo) -> None:
    client = open_request(
        demo_log.port, "POST", "/orders", body=b" " * (256 * 1024 + 1),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with client:
        status, body = read_response(client)
        client.settimeout(10)
        try:
            closed = client.recv(1) == b""
        except ConnectionResetError:  # closed with the rest of the body unread: a reset
            closed = True

    assert status == 413
    assert b"the body is limited to 262144 bytes" in body
    assert closed
    assert_no_traceback(demo_log.log())


def test_order_body_declared_over_its_limit_is_refused_before_reading(demo_log: Demo) -> None:
    client = open_request(demo_log.port, "POST", "/orders", headers={"Content-Length": str(10**9)})
    with client:
        status, body = read_response(client)

    assert status == 413
    assert b"the body is limited to 262144 bytes" in body
    assert_no_traceback(demo_log.log())


def test_upload_over_the_declared_limit_is_refused_before_reading(demo_log: Demo) -> None:
    client = open_request(
        demo_log.port, "POST", "/uploads", headers={"Content-Length": str(17 * 1024 * 1024)}
    )
    with client:
        status, body = read_response(client)

    assert status == 413
    assert b"uploads are limited to 16777216 bytes" in body
    assert not list(demo_log.upload_dir.glob("*.part"))
    assert_no_traceback(demo_log.log())


def test_chunked_upload_past_the_limit_is_cut_off_and_removed(demo_log: Demo) -> None:
    size = 16 * 1024 * 1024 + 4096
    chunk = b"z" * 65536
    pieces = [chunk] * (size // len(chunk)) + [chunk[: size % len(chunk)]]
    body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    client = open_request(
        demo_log.port, "POST", "/uploads", body=body, headers={"Transfer-Encoding": "chunked"}
    )
    with client:
        status, response = read_response(client)

    assert status == 413
    assert b"uploads are limited" in response
    assert not [p for p in demo_log.upload_dir.iterdir() if p.suffix == ".part"]
    assert_no_traceback(demo_log.log())


def test_upload_with_malformed_content_length_is_a_bad_request(demo_log: Demo) -> None:
    # uvicorn itself rejects a non-numeric Content-Length before the app sees it: still no 500.
    client = open_request(demo_log.port, "POST", "/uploads", headers={"Content-Length": "lots"})
    with client:
        status, _ = read_response(client)
    assert status == 400


def test_page_names_the_project_and_links_its_readme(demo_log: Demo) -> None:
    page = demo_log.get("/").text
    assert '<a href="/about">request-aborted</a>' in page
    about = demo_log.get("/about")
    assert about.status_code == 200
    assert about.headers["content-type"] == "text/plain; charset=utf-8"
    assert about.text.startswith("# request-aborted\n")


def test_page_says_its_live_panel_counts_since_the_server_started(demo_log: Demo) -> None:
    page = demo_log.get("/").text
    assert "Live from the server, since it started</h2>" in page


def test_favicon_is_the_pages_svg_icon(demo_log: Demo) -> None:
    icon = demo_log.get("/favicon.ico")
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/svg+xml"
    assert icon.text.startswith("<svg ") and "request-aborted" in icon.text
    assert '<link rel="icon" href="/favicon.ico"' in demo_log.get("/").text
