"""``bench/bench_instructions.py`` counts, under callgrind, what it says it counts.

Run tiny: checked is that every variant asked for got a count, and that the middleware's count
is above the floor's (it does the floor's work and more), never a figure.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from ._scripts import ROOT, output_of

SCRIPT = ROOT / "bench" / "bench_instructions.py"

pytestmark = pytest.mark.skipif(
    shutil.which("valgrind") is None and os.environ.get("CI") != "true",
    reason="valgrind is not installed (apt-get install valgrind; .ci/run installs it)",
)


def counted(output: str, label: str) -> int:
    row = next((line for line in output.splitlines() if line.startswith(f"| {label}")), None)
    assert row is not None, f"{label!r} missing from:\n{output}"
    figure = re.search(r"\| ([+-]?[\d,]+) \|", row)
    assert figure is not None, row
    return int(figure.group(1).replace(",", ""))


def test_the_middleware_counts_more_instructions_per_request_than_the_floor() -> None:
    output = output_of(SCRIPT, "--only", "h,b", "--requests", "20", "--warmup", "20", timeout=600)
    floor = counted(output, "(h) the floor")
    ours = counted(output, "(b) the middleware")
    assert floor > 10_000  # a Starlette request is tens of thousands of instructions
    assert ours > floor
    assert counted(output, "(b)-(h) unused over the floor") == ours - floor
