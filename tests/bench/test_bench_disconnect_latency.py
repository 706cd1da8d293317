"""``bench/bench_disconnect_latency.py`` measures on a real uvicorn, idle and under wrk's load.

Run tiny (three samples a row): checked are the rows, that uvicorn's protocol noted when the server
saw each close (``bench/_seen.py``: *seen to fired* has both ends in the server process) and that
the loaded rows really ran under wrk; never a latency.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from ._scripts import ROOT, output_of

SCRIPT = ROOT / "bench" / "bench_disconnect_latency.py"
TINY = ["--servers", "uvicorn httptools", "--requests", "3", "--settle", "0.2", "--no-write"]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def run(*args: str) -> str:
    return output_of(SCRIPT, *TINY, *args, timeout=110)


def rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]


def number(cell: str) -> float:
    return float(cell.strip("*"))


def test_each_mode_has_a_row_with_the_token_and_the_server_side_seen_to_fired() -> None:
    found = rows(run())
    assert [row["client closed"] for row in found] == ["before response", "mid-stream"]
    for row in found:
        assert row["server"] == "uvicorn httptools"
        assert int(row["samples"]) + int(row["not counted"]) >= 3
        assert int(row["samples"]) >= 1
        assert number(row["token p99"]) >= number(row["token p50"]) >= 0
        assert number(row["seen to fired p50"]) >= 0
        assert number(row["control seen to fired p50"]) >= 0


@pytest.mark.skipif(
    shutil.which("wrk") is None and os.environ.get("CI") != "true",
    reason="wrk is not installed (apt-get install wrk; .ci/run installs it)",
)
def test_load_measures_idle_then_under_wrk_on_the_same_server_and_says_how_much_load() -> None:
    text = run("--load", "--load-seconds", "10")
    found = rows(text)
    assert [(row["load"], row["client closed"]) for row in found] == [
        ("none", "before response"),
        ("none", "mid-stream"),
        ("wrk -c16", "before response"),
        ("wrk -c16", "mid-stream"),
    ]
    assert all(int(row["samples"]) >= 1 for row in found)
    served = re.search(r"loaded `/plaintext-token` .*?: (\d+) requests in ([\d.]+) s", text)
    assert served is not None, text
    assert int(served.group(1)) > 0
