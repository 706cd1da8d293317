"""Draw ``docs/benchmarks.png`` from the results files in ``bench/results/``.

One panel per result that is present, read from the Markdown tables the benchmarks write:

* goodput (``goodput.md``): reports answered per second, and PostgreSQL CPU spent on abandoned
  requests, with the token honoured and ignored;
* overhead (``overhead.md``, section ``bench_overhead``): each variant's paired ratio against its
  baseline, with the targets;
* disconnect latency (``overhead.md``, ``bench_disconnect_latency-realtime`` or
  ``bench_disconnect_latency``): from the client closing to the token firing, p50 and p99;
* memory (``overhead.md``, ``bench_memory``): RSS over 100,000 requests, with and without the
  middleware.

A result that is missing leaves its panel out; nothing is measured here. Needs matplotlib (a
``[dev]`` extra)::

    .venv/bin/python bench/bench_chart.py
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OUTPUT = ROOT / "docs" / "benchmarks.png"
HONOURED, IGNORED = "#2a7ab0", "#c8553d"

Table = list[dict[str, str]]
Draw = Callable[[Axes], None]
PANEL_HEIGHT = 4.2  # inches, for a panel whose labels fit on one or two lines
LABEL_WIDTH = 60  # characters per line of a bar label; longer labels wrap on word boundaries


def wrapped(label: str, width: int = LABEL_WIDTH) -> str:
    """``label`` on as many lines as it needs, broken between words, never inside one."""
    return "\n".join(textwrap.wrap(label, width, break_long_words=False, break_on_hyphens=False))


def tables(text: str) -> list[Table]:
    """Every Markdown table in ``text``, as rows of ``{header: cell}`` (emphasis removed)."""
    found: list[Table] = []
    lines = text.splitlines()
    for i in range(len(lines) - 1):
        if not (lines[i].startswith("|") and re.match(r"^\|(\s*:?-+:?\s*\|)+$", lines[i + 1])):
            continue
        header = _cells(lines[i])
        rows = []
        for line in lines[i + 2 :]:
            if not line.startswith("|"):
                break
            rows.append(dict(zip(header, _cells(line), strict=False)))
        found.append(rows)
    return found


def _cells(line: str) -> list[str]:
    return [re.sub(r"[*`]", "", cell).strip() for cell in line.strip().strip("|").split("|")]


def section(text: str, name: str) -> str | None:
    match = re.search(rf"<!-- begin {re.escape(name)} -->(.*?)<!-- end {re.escape(name)} -->",
                      text, re.DOTALL)  # fmt: skip
    return match.group(1) if match else None


def number(cell: str) -> float | None:
    match = re.search(r"-?[\d,]*\.?\d+", cell)
    return float(match.group(0).replace(",", "")) if match else None


def table_with(text: str | None, column: str) -> Table:
    """The first table in ``text`` that has ``column``; empty if none."""
    return next((t for t in tables(text or "") if t and column in t[0]), [])


# -- panels ------------------------------------------------------------------------------------


def goodput_panel(text: str) -> tuple[Draw, float] | None:
    rows = table_with(text, "per round (median)")
    by_name = {row["per round (median)"]: row for row in rows}
    goodput = by_name.get("reports answered in full per second (goodput)")
    wasted = next((row for name, row in by_name.items() if "CPU s on abandoned" in name
                   and "backlog" in name), None)  # fmt: skip
    if goodput is None or wasted is None:
        return None
    columns = list(goodput)[1:3]

    def draw(ax: Axes) -> None:
        values = [[number(goodput[c]) or 0.0 for c in columns],
                  [number(wasted[c]) or 0.0 for c in columns]]  # fmt: skip
        twin = ax.twinx()
        for offset, colour, column_values in ((-0.2, HONOURED, 0), (0.2, IGNORED, 1)):
            ax.bar([0 + offset], [values[0][column_values]], 0.4, color=colour)
            twin.bar([1 + offset], [values[1][column_values]], 0.4, color=colour)
        ax.set_xticks(
            [0, 1], ["goodput\n(reports/s, left)", "PostgreSQL CPU s on\nabandoned work (right)"]
        )
        ax.set_ylabel("reports answered per second")
        twin.set_ylabel("CPU seconds")
        ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=HONOURED),
                           plt.Rectangle((0, 0), 1, 1, color=IGNORED)],
                  labels=["token honoured", "token ignored"], loc="upper center")  # fmt: skip
        ax.set_title("Half the clients give up after 200 ms (PostgreSQL, pool of 10)")

    return draw, PANEL_HEIGHT


def overhead_labels(rows: Table) -> list[str]:
    """One label per variant: the endpoint and the variant's description, wrapped."""
    return [wrapped(f"{row['endpoint']} {row['variant'].removesuffix(', for reference')}")
            for row in rows]  # fmt: skip


def overhead_panel(text: str) -> tuple[Draw, float] | None:
    rows = [row for row in table_with(section(text, "bench_overhead"), "paired ratio")
            if number(row.get("paired ratio", "")) is not None]  # fmt: skip
    if not rows:
        return None
    labels = overhead_labels(rows)
    lines = sum(label.count("\n") + 1 for label in labels)

    def draw(ax: Axes) -> None:
        ratios = [number(row["paired ratio"]) or 0.0 for row in rows]
        positions = range(len(rows))
        ax.barh(positions, ratios, color=HONOURED)
        ax.set_yticks(list(positions), labels, fontsize=7, linespacing=1.0)
        ax.invert_yaxis()
        ax.axvline(1.0, color="grey", linewidth=0.8)
        for position, row in zip(positions, rows, strict=True):
            target = number(row.get("target (paired)", ""))
            if target is not None:
                ax.plot([target, target], [position - 0.4, position + 0.4], color="black")
        ax.set_xlabel("throughput relative to the baseline (paired); black tick: target")
        ax.set_title("Overhead of the middleware (bench_overhead.py)")

    return draw, max(PANEL_HEIGHT, 1.2 + 0.22 * lines)


def latency_panel(text: str) -> tuple[Draw, float] | None:
    name = next((n for n in ("bench_disconnect_latency-realtime", "bench_disconnect_latency")
                 if section(text, n)), None)  # fmt: skip
    rows = table_with(section(text, name) if name else None, "token p99")
    if not rows:
        return None

    def draw(ax: Axes) -> None:
        labels = [f"{row['server']}\n{row['client closed']}" for row in rows]
        positions = list(range(len(rows)))
        for shift, column, colour in ((-0.2, "token p50", HONOURED), (0.2, "token p99", IGNORED)):
            ax.bar([p + shift for p in positions], [number(row[column]) or 0.0 for row in rows],
                   0.4, color=colour, label=column)  # fmt: skip
        ax.set_xticks(positions, labels, fontsize=7)
        ax.set_ylabel("ms from close to token fired")
        ax.legend()
        ax.set_title(f"Disconnect latency ({name})")

    return draw, PANEL_HEIGHT


def memory_panel(text: str) -> tuple[Draw, float] | None:
    rows = table_with(section(text, "bench_memory"), "middleware RSS MiB")
    if not rows:
        return None

    def draw(ax: Axes) -> None:
        requests = [number(row["requests"]) or 0.0 for row in rows]
        for column, colour, label in (("middleware RSS MiB", HONOURED, "with the middleware"),
                                      ("bare RSS MiB", IGNORED, "bare Starlette")):  # fmt: skip
            ax.plot(requests, [number(row[column]) or 0.0 for row in rows], color=colour,
                    marker="o", markersize=3, label=label)  # fmt: skip
        ax.set_xlabel("requests served")
        ax.set_ylabel("RSS, MiB")
        highest = max(number(row[c]) or 0.0 for row in rows
                      for c in ("middleware RSS MiB", "bare RSS MiB"))  # fmt: skip
        ax.set_ylim(0, highest * 1.25)
        ax.legend(loc="lower right")
        ax.set_title("Memory over 100,000 requests (bench_memory.py)")

    return draw, PANEL_HEIGHT


def main() -> None:
    goodput = (RESULTS / "goodput.md").read_text() if (RESULTS / "goodput.md").exists() else ""
    overhead = (RESULTS / "overhead.md").read_text() if (RESULTS / "overhead.md").exists() else ""
    panels = [
        panel
        for panel in (goodput_panel(goodput), overhead_panel(overhead), latency_panel(overhead),
                      memory_panel(overhead))
        if panel is not None
    ]  # fmt: skip
    if not panels:
        raise SystemExit(f"no results to draw in {RESULTS}")
    heights = [height for _, height in panels]
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights)),
                                gridspec_kw={"height_ratios": heights})  # fmt: skip
    for (draw, _), ax in zip(panels, [axes] if len(panels) == 1 else axes, strict=True):
        draw(ax)
    figure.tight_layout()
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUTPUT, dpi=110)
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(panels)} panels)")


if __name__ == "__main__":
    main()
