"""The docs' links lead somewhere real, inside the repository; BENCHMARKS.md reads as a reference.

A newcomer on a fresh clone follows README.md's links: one to a file outside the repository (the
old ``../shared/HAZARDS.md``) or to a heading that was renamed is a dead end. Anchors are checked
the way GitHub makes them from headings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs._examples import ROOT

DOCUMENTS = [
    path
    for path in (ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md",
                 *sorted(ROOT.glob("docs/*.md")))
    if path.is_file()
]  # fmt: skip
_LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)\)")
_FENCE = re.compile(r"^\s*```.*?^\s*```", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#{1,6} +(?P<title>.+?) *#*$", re.MULTILINE)


def anchors(document: Path) -> set[str]:
    """GitHub's anchors for the headings of ``document``: lower case, punctuation dropped."""
    found: set[str] = set()
    for match in _HEADING.finditer(_FENCE.sub("", document.read_text())):
        slug = re.sub(r"[^\w\- ]", "", match.group("title").lower()).replace(" ", "-")
        candidate, n = slug, 1
        while candidate in found:
            candidate, n = f"{slug}-{n}", n + 1
        found.add(candidate)
    return found


def links(document: Path) -> list[str]:
    return [m.group("target") for m in _LINK.finditer(_FENCE.sub("", document.read_text()))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_or_heading_in_the_repository(document: Path) -> None:
    broken = []
    for target in links(document):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if not path.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading makes #{anchor}")
    assert broken == []


def test_benchmarks_read_as_a_reference_not_a_lab_notebook() -> None:
    text = (ROOT / "BENCHMARKS.md").read_text().lower()
    diary = [p for p in ("last session", "this session", "previous session", "earlier today",
                         "yesterday", "in an earlier run") if p in text]  # fmt: skip
    assert diary == [], "history goes to CHANGELOG.md's 'History of the benchmark figures'"


def test_anchors_are_made_the_way_github_makes_them(tmp_path: Path) -> None:
    document = tmp_path / "page.md"
    document.write_text("# Title\n## Middleware overhead\n## `token.scope()` costs\n## Title\n")
    assert anchors(document) == {"title", "middleware-overhead", "tokenscope-costs", "title-1"}
