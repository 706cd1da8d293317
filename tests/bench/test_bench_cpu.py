"""``bench/bench_cpu.py`` runs end to end and reports every variant and difference it promises.

Run tiny (a few requests per variant): what is checked is the output's shape and that each app
really answered, never a speed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ._scripts import ROOT, output_of, run_script

SCRIPT = ROOT / "bench" / "bench_cpu.py"
TINY = ["--rounds", "3", "--requests", "5", "--warmup", "2", "--settle", "1"]
VARIANTS = {"driver", "a", "h", "b", "a+sleep", "h'", "c"}
DIFFERENCES = {"b-h": 0.3, "c-h'": 2.0, "h-a": None, "h'-a+sleep": None, "c-a+sleep": None}


def run(*args: str) -> str:
    return output_of(SCRIPT, *TINY, *args, timeout=120)


def test_json_has_a_cost_per_variant_and_each_difference_with_its_goal() -> None:
    found = json.loads(run("--json"))
    assert set(found["variants"]) == VARIANTS
    for variant in found["variants"].values():
        assert len(variant["rounds"]) == 3
        assert variant["min"] <= variant["us_per_request"] <= variant["max"]
        assert variant["us_per_request"] > 0
        assert variant["watchers_per_request"] >= 0
    assert {key: d["goal_us"] for key, d in found["differences"].items()} == DIFFERENCES
    for difference in found["differences"].values():
        assert difference["ci_low"] <= difference["us"] <= difference["ci_high"]
        assert difference["met"] is (
            None if difference["goal_us"] is None else difference["us"] <= difference["goal_us"]
        )
    assert found["settings"] == {
        "rounds": 3,
        "requests": 5,
        "concurrency": 1,
        "loop": "uvloop",
        "endpoint": "plaintext",
        "candidates": [],
    }


def test_the_table_has_a_row_per_variant_and_per_difference() -> None:
    text = run("--concurrency", "2", "--loop", "asyncio")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    header_rows = [row for row in rows if row.startswith(("| variant", "| difference"))]
    assert len(header_rows) == 2
    assert len(rows) == 2 + len(VARIANTS) + len(DIFFERENCES)
    assert "(c)-(h')" in text and "(b)-(h)" in text


def test_only_restricts_the_variants_and_keeps_the_differences_they_allow() -> None:
    found = json.loads(run("--json", "--only", "h,b"))
    assert set(found["variants"]) == {"h", "b"}
    assert set(found["differences"]) == {"b-h"}


def test_a_candidate_copy_of_the_package_is_measured_beside_this_trees(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "middleware" / "request_aborted", tmp_path / "request_aborted")
    found = json.loads(run("--json", "--only", "h,b,h',c,b*1,c*1", "--candidate", str(tmp_path)))
    assert set(found["variants"]) == {"h", "b", "h'", "c", "b*1", "c*1"}
    assert {"b*1-h", "c*1-h'", "b-b*1", "c-c*1"} <= set(found["differences"])
    assert found["settings"]["candidates"] == [str(tmp_path)]


def test_a_candidate_folder_without_the_package_is_refused(tmp_path: Path) -> None:
    done = run_script(SCRIPT, *TINY, "--candidate", str(tmp_path), timeout=120)
    assert done.returncode != 0
    assert "imported from" in done.stderr


def test_profile_names_where_one_variants_time_went_instead_of_measuring() -> None:
    text = run("--profile", "c")
    assert text.startswith("(c) the middleware")
    assert "Ordered by: internal time" in text
    assert "request_aborted" in text
    assert "| difference" not in text


def test_the_json_family_is_measured_with_the_same_variants() -> None:
    found = json.loads(run("--json", "--endpoint", "json"))
    assert set(found["variants"]) == VARIANTS
    assert found["settings"]["endpoint"] == "json"
