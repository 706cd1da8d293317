"""The search page in a real browser: a fetch aborted by the page stops its work in PostgreSQL.

Headless Chromium (Playwright's sync API) types a query into the demo's page at ``/``, one key
every 30 ms. The page sends ``GET /search`` on every keystroke and aborts the previous ``fetch``
with an ``AbortController``. The demo runs under a real uvicorn on a real PostgreSQL, and the test
reads from the server side what became of the superseded searches: most must have ended as
``ClientDisconnected`` (499) in the server's log and in ``/stats``, and no search statement may be
left running in ``pg_stat_activity``. The page must end showing the results of the final text. A
screenshot of the page after the run goes to the test's temporary directory, or, with
``SEARCH_SCREENSHOT=docs/search-page.png`` in the environment, wherever that says (that is how the
README's picture is refreshed; a plain test run leaves the working tree alone).

Needs Chromium at ``/usr/bin/chromium`` and the ``playwright`` package (``scripts/ci-browser.sh``
installs what is missing); without them the test is skipped, or fails under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
import pytest

from tests._fixtures.postgres import PostgresDatabase, PostgresServer
from tests._fixtures.servers import ServerProcess

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
QUERY = "amber portable duvet"  # 20 characters; the seed has three of them
KEY_DELAY_MS = 30
SEED_ROWS = "20000"  # the search reads products, not sales: a small seed starts in seconds
ABORTED_SEARCH = re.compile(
    r"request_aborted: GET /search aborted after [0-9.]+s: ClientDisconnected.*\(499\)"
)
SCREENSHOT_MAX_BYTES = 200_000

Serve = Callable[..., ServerProcess]


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the browser test must run here)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium from the machine's package, driven by Playwright."""
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"Chromium not found at {CHROMIUM} (scripts/ci-browser.sh installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed: pip install 'playwright>=1.40'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def search_demo(
    postgres: PostgresServer, serve: Serve, tmp_path: Path
) -> Iterator[tuple[ServerProcess, PostgresDatabase]]:
    """The demo under uvicorn on a fresh PostgreSQL database, seeded by the demo itself."""
    database = PostgresDatabase(postgres, postgres.create_database())
    server = None
    try:
        server = serve(
            "app.main:app",
            server="uvicorn",
            http="httptools",
            env={
                "DATABASE_URL": database.dsn,
                "SEED_ROWS": SEED_ROWS,
                "UPLOAD_DIR": str(tmp_path / "uploads"),
                "LOG_LEVEL": "INFO",
            },
            ready_timeout=60,
        )
        yield server, database
    finally:
        if server is not None:
            server.stop()  # before the database goes, so the demo does not see it vanish
        postgres.drop_database(database.name)


def stats_when(server: ServerProcess, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        stats: dict[str, Any] = httpx.get(f"{server.base_url}/stats").json()
        if ready(stats):
            return stats
        if time.monotonic() > deadline:
            pytest.fail(f"/stats never settled: {stats}\n{server.log()}")
        time.sleep(0.05)


def busy_searches(database: PostgresDatabase) -> list[Any]:
    """The demo's backends still running (or in a transaction for) a statement on products."""
    return [
        row
        for row in database.backends()
        if row["state"] != "idle" and "products" in (row["query"] or "")
    ]


def test_typing_aborts_superseded_searches_down_to_the_database(
    search_demo: tuple[ServerProcess, PostgresDatabase], browser: Browser, tmp_path: Path
) -> None:
    server, database = search_demo
    page = browser.new_page(viewport={"width": 1120, "height": 760})
    page.goto(f"{server.base_url}/")
    page.wait_for_selector('#panel[data-state="live"]')

    page.locator("#q").click()
    page.keyboard.type(QUERY, delay=KEY_DELAY_MS)

    # The page ends showing the results for the final text, and only those.
    page.wait_for_function(
        "query => document.getElementById('results').dataset.query === query", arg=QUERY
    )
    names = page.locator("#products .name").all_inner_texts()
    assert names and all(name.lower() == QUERY for name in names), names

    # Every search the server received has ended, one way or the other.
    sent = int(page.inner_text("#c-sent"))
    superseded = sent - 1
    stats = stats_when(server, lambda s: s["requests"]["in_flight"] == 0)
    requests = stats["requests"]
    assert requests["failed"] == 0, server.log()  # no 500s
    assert requests["started"] == requests["completed"] + requests["aborted"] <= sent, stats

    # Most superseded searches ended as ClientDisconnected, in the log and in /stats alike.
    log = server.log()
    aborted = len(ABORTED_SEARCH.findall(log))
    assert aborted > superseded / 2, f"{aborted} of {superseded} superseded searches aborted"
    assert requests["aborted_by_reason"] == {"ClientDisconnected": aborted}, stats
    assert stats["cancelled"]["outbound_calls"] > 0, stats  # the upstream call is most of a search
    assert "Traceback" not in log, log

    # Nothing the aborted searches started is still running in PostgreSQL.
    assert busy_searches(database) == []

    # The panel has caught up with the final numbers: that is the picture for the docs.
    page.wait_for_function(
        """([completed, aborted]) =>
            document.getElementById('s-completed').textContent === completed &&
            document.getElementById('s-aborted').textContent === aborted &&
            document.getElementById('s-in-flight').textContent === '0'""",
        arg=[f"{requests['completed']:,}", f"{aborted:,}"],
    )
    screenshot = Path(os.environ.get("SEARCH_SCREENSHOT") or tmp_path / "search-page.png")
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size < SCREENSHOT_MAX_BYTES

    print(
        f"\nsearches sent {sent}, superseded {superseded}; page aborted "
        f"{page.inner_text('#c-aborted')}; server: {aborted} ClientDisconnected (499), "
        f"{stats['cancelled']}, DB time {stats['db_time_ms']}"
    )
