"""The console script end to end: exit codes, the text and JSON formats, the rules list."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from request_aborted._check.cli import main

from ._support import FIXTURES

MIDDLEWARE = Path(__file__).parents[3] / "middleware"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(MIDDLEWARE), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "request_aborted._check", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": path},
        check=False,
    )


def test_cli_exits_1_and_prints_ruff_style_lines_for_findings() -> None:
    result = run("check", str(FIXTURES / "ra104_bad.py"))
    assert result.returncode == 1
    output = result.stdout.splitlines()
    assert len(output) == 5
    assert all(re.fullmatch(r".+ra104_bad\.py:\d+:\d+ RA104 .+", line) for line in output)
    assert output[0].endswith("ra104_bad.py:19:5 RA104 " + output[0].split(" RA104 ")[1])


def test_cli_exits_0_on_clean_code() -> None:
    result = run("check", str(FIXTURES / "ra101_good.py"), str(FIXTURES / "ra105_good.py"))
    assert (result.returncode, result.stdout) == (0, "")


def test_cli_exits_2_on_usage_errors() -> None:
    assert run().returncode == 2
    assert run("check", "--format", "xml", str(FIXTURES)).returncode == 2
    missing = run("check", str(FIXTURES / "missing.py"))
    assert missing.returncode == 2
    assert "missing.py" in missing.stderr


def test_cli_json_format_lists_path_line_col_code_message() -> None:
    result = run("check", "--format", "json", str(FIXTURES / "ra103_bad.py"))
    assert result.returncode == 1
    findings = json.loads(result.stdout)
    assert [(f["code"], f["line"], f["col"]) for f in findings if f["code"] == "RA103"] == [
        ("RA103", 14, 31),
        ("RA103", 15, 44),
        ("RA103", 21, 31),
    ]
    assert all(set(f) == {"path", "line", "col", "code", "message"} for f in findings)


def test_cli_json_format_prints_an_empty_list_when_clean() -> None:
    result = run("check", "--format", "json", str(FIXTURES / "ra102_good.py"))
    assert (result.returncode, json.loads(result.stdout)) == (0, [])


def test_cli_select_and_ignore_filter_by_code_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--select", "RA10", "--ignore", "RA102", str(FIXTURES / "shop")]) == 1
    codes = {line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert codes == {"RA101"}


def test_cli_rules_lists_every_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == ["RA000", "RA101", "RA102", "RA103", "RA104", "RA105"]
