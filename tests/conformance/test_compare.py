"""scripts/conformance compares JUnit reports test by test: what counts as a regression."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

RUNNER = Path(__file__).resolve().parents[2] / "scripts" / "_conformance" / "run.py"


def _load_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("conformance_run", RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


runner = _load_runner()

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
  <testcase classname="tests.test_a" name="test_passes[asyncio]" time="0.1"/>
  <testcase classname="tests.test_a" name="test_passes[trio]" time="0.1"/>
  <testcase classname="tests.test_a" name="test_fails" time="0.1">
    <failure message="AssertionError: assert 500 == 200&#10;more">traceback</failure>
  </testcase>
  <testcase classname="tests.test_a" name="test_teardown_breaks" time="0.1"/>
  <testcase classname="tests.test_a" name="test_teardown_breaks" time="0.1">
    <error message="failed on teardown with &quot;RuntimeError&quot;">traceback</error>
  </testcase>
  <testcase classname="tests.test_a" name="test_skipped" time="0.0">
    <skipped message="needs a thing"/>
  </testcase>
</testsuite></testsuites>
"""


def test_a_junit_report_reads_as_one_outcome_per_test_the_worst_one(tmp_path: Path) -> None:
    report = tmp_path / "report.xml"
    report.write_text(JUNIT)

    outcomes = runner.outcomes(report)

    assert {test: outcome.status for test, outcome in outcomes.items()} == {
        "tests.test_a::test_passes[asyncio]": "passed",
        "tests.test_a::test_passes[trio]": "passed",
        "tests.test_a::test_fails": "failed",
        "tests.test_a::test_teardown_breaks": "error",
        "tests.test_a::test_skipped": "skipped",
    }
    assert outcomes["tests.test_a::test_fails"].message == "AssertionError: assert 500 == 200"


def test_a_regression_passes_as_shipped_and_fails_errors_or_vanishes_injected() -> None:
    passed, failed = runner.Outcome("passed"), runner.Outcome("failed", "boom")
    baseline = {
        "still_passes": passed,
        "now_fails": passed,
        "now_errors": passed,
        "now_missing": passed,
        "now_skipped": passed,
        "failed_anyway": failed,
    }
    injected = {
        "still_passes": passed,
        "now_fails": failed,
        "now_errors": runner.Outcome("error"),
        "now_skipped": runner.Outcome("skipped"),
        "failed_anyway": failed,
    }

    assert runner.find_regressions(baseline, injected) == ["now_errors", "now_fails", "now_missing"]


def test_the_known_baseline_failures_all_have_a_reason() -> None:
    known = runner.known_failures()

    assert known, "the root-only Starlette tests are listed"
    for test, reason in known.items():
        suite, _, test_id = test.partition(" ")
        assert suite in runner.SUITES and "::" in test_id, test
        assert reason, f"{test} has no reason"


def test_a_failure_can_be_run_again_alone_by_the_node_id_its_report_names(tmp_path: Path) -> None:
    suite = tmp_path / "tests" / "test_mod.py"
    suite.parent.mkdir()
    suite.write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('x', ['a-1', 'b.2'])\n"
        "def test_param(x): assert x != 'b.2'\n"
        "class TestGroup:\n"
        "    def test_method(self): assert False\n"
        "def test_fine(): pass\n"
    )
    report = tmp_path / "report.xml"
    pytest_in_tmp = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
    ]
    subprocess.run(
        [*pytest_in_tmp, f"--junitxml={report}", "-o", "junit_family=xunit1"],
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    outcomes = runner.outcomes(report)
    failed = sorted(o.node_id for o in outcomes.values() if o.status == "failed")
    assert failed == [
        "tests/test_mod.py::TestGroup::test_method",
        "tests/test_mod.py::test_param[b.2]",
    ]

    again = subprocess.run(
        [*pytest_in_tmp, *failed], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert again.stdout.strip().splitlines()[-1].startswith("2 failed in")
