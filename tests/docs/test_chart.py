"""The benchmark chart's bar labels are whole: wrapped between words, never cut inside one."""

from __future__ import annotations

import pytest

chart = pytest.importorskip("bench.bench_chart", reason="the chart needs matplotlib ([dev])")


def test_a_long_label_wraps_between_words_and_keeps_every_word() -> None:
    label = "/json (h') + the floor, sleep(0) inside an async with that does nothing: the least"
    lines = chart.wrapped(label, width=30).split("\n")
    assert len(lines) > 1
    assert all(len(line) <= 30 for line in lines)
    assert " ".join(lines).split() == label.split()


def test_every_overhead_label_of_the_recorded_results_is_whole() -> None:
    text = (chart.RESULTS / "overhead.md").read_text()
    rows = chart.table_with(chart.section(text, "bench_overhead"), "paired ratio")
    assert rows, "bench/results/overhead.md has no bench_overhead table"
    for row, label in zip(rows, chart.overhead_labels(rows), strict=True):
        variant = row["variant"].removesuffix(", for reference")
        assert label.split() == f"{row['endpoint']} {variant}".split()
        assert all(len(line) <= chart.LABEL_WIDTH for line in label.split("\n"))
