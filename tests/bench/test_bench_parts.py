"""``bench/bench_parts.py`` runs end to end and reports every part it promises.

Run tiny: what is checked is that each part was timed (a positive figure) and both whole-request
differences printed, never a speed.
"""

from __future__ import annotations

import re

from ._scripts import ROOT, output_of

SCRIPT = ROOT / "bench" / "bench_parts.py"
PARTS = [
    "unused: ours over the floor",
    "observed: ours over the floor's block",
    "the request object, made and ended",
    "the floor's request and token objects",
    "the loop cache, checked",
    "the token source's fields (_init_source)",
    "the token view",
    "the start time (time.monotonic)",
    "a context-variable set and reset",
    "token.scope(), entered and left",
    "a do-nothing async with, entered and left",
]


def test_every_part_is_timed() -> None:
    output = output_of(SCRIPT, "--rounds", "2", "--requests", "100", "--number", "200", timeout=120)
    for part in PARTS:
        row = next((line for line in output.splitlines() if part in line), None)
        assert row is not None, f"{part!r} missing from:\n{output}"
        figure = re.search(r"\| ([+-]?\d+) \|$", row)
        assert figure is not None, row
        if "over the floor" not in part:  # differences may read negative on a tiny run
            assert int(figure.group(1)) > 0, row
