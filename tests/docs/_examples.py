"""The Python examples of README.md and docs/*.md live as files in docs/examples/.

A reader copies a block from the docs and expects it to run; a block that is only a fragment
(missing imports, undefined names, a top-level ``await``) fails as pasted. So every ```python
block is a complete module kept in ``docs/examples/NAME.py`` (FastAPI's ``docs_src`` idea), the
line right before the block names it::

    <!-- example: docs/examples/starlette_app.py -->
    ```python
    ...the file, verbatim...
    ```

and the tests run the files (``tests/docs/test_examples.py``). Edit the file, then copy it into
every block that names it::

    .venv/bin/python -m tests.docs._examples           # rewrite the blocks from the files
    .venv/bin/python -m tests.docs._examples --check   # exit 1 if a block differs from its file

A block inside a list item is indented; its marker carries the same indentation, and the file
holds the code without it.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
_MARKER = re.compile(r"^(?P<indent>\s*)<!-- example: (?P<path>\S+) -->\s*$")
_OPEN = re.compile(r"^(?P<indent>\s*)```python\s*$")


def documents() -> list[Path]:
    """The Markdown files whose Python blocks must be runnable examples."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    """One ```python block: where it is, the example it names (if any) and its code."""

    document: Path
    line: int  # 1-based line of the opening fence
    indent: str
    example: str | None  # the marker's path, relative to the repository root
    code: str  # the block's lines without the indentation, each ending in a newline
    start: int  # 0-based index of the first code line
    end: int  # 0-based index of the closing fence

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"

    def example_path(self) -> Path | None:
        return None if self.example is None else ROOT / self.example


def blocks(document: Path) -> list[Block]:
    """Every ```python block of ``document``, with the example its preceding line names."""
    lines = document.read_text().splitlines(keepends=True)
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _OPEN.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent = opening.group("indent")
        close = index + 1
        while close < len(lines) and lines[close].rstrip() != f"{indent}```":
            close += 1
        if close == len(lines):
            raise ValueError(f"{document}:{index + 1}: a ```python block is never closed")
        marker = _MARKER.match(lines[index - 1]) if index > 0 else None
        code = "".join(_dedent(line, indent) for line in lines[index + 1 : close])
        found.append(
            Block(document, index + 1, indent, marker.group("path") if marker else None, code,
                  index + 1, close)
        )  # fmt: skip
        index = close + 1
    return found


def _dedent(line: str, indent: str) -> str:
    if line.strip() == "":
        return "\n"
    if not line.startswith(indent):
        raise ValueError(f"a line of an indented block is indented less than its fence: {line!r}")
    return line[len(indent) :]


def rendered(document: Path) -> str:
    """``document`` with every marked block replaced by its example file, indented as the block."""
    lines = document.read_text().splitlines(keepends=True)
    for block in reversed(blocks(document)):
        path = block.example_path()
        if path is None or not path.is_file():
            continue
        code = [
            f"{block.indent}{line}" if line.strip() else "\n"
            for line in path.read_text().splitlines(keepends=True)
        ]
        lines[block.start : block.end] = code
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.docs._examples",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--check", action="store_true", help="only report blocks that differ")
    options = parser.parse_args(argv)
    stale = []
    for document in documents():
        text = rendered(document)
        if text != document.read_text():
            stale.append(document.relative_to(ROOT))
            if not options.check:
                document.write_text(text)
    verb = "differ from their example files" if options.check else "rewritten from their files"
    for name in stale:
        print(f"{name}: blocks {verb}")
    return 1 if options.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
