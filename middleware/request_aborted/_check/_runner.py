"""Finding the files, parsing them, running every rule, and turning hits into findings.

All files are parsed before any rule runs, because RA101 in one file needs the signatures of
another. A file that does not parse becomes an RA000 finding and drops out of the index; nothing
the checker reads can make it crash.
"""

from __future__ import annotations

import ast
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import _forwarding, _handlers, _sources, _unused
from ._index import ProjectIndex
from ._resolve import Resolver
from ._suppress import Comments
from ._vocabulary import mentions_cancellation
from .rules import Finding, Hit

__all__ = ["check_paths", "iter_python_files"]

_SKIPPED_DIRECTORIES = frozenset({".venv", "__pycache__"})
_TOKEN_WORDS = (b"token", b"requestaborted", b"request_aborted")


@dataclass(eq=False, slots=True)
class _Source:
    display: str
    path: Path
    data: bytes
    tree: ast.Module
    comments: Comments


def iter_python_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """``*.py`` under each directory (no hidden ones, no virtualenvs), and each file given.

    Raises FileNotFoundError for a path that does not exist: a typo must not look like "clean".
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for directory, subdirectories, files in os.walk(path):
                subdirectories[:] = sorted(
                    name
                    for name in subdirectories
                    if name not in _SKIPPED_DIRECTORIES and not name.startswith(".")
                )
                for name in sorted(files):
                    if name.endswith(".py"):
                        yield Path(directory, name)
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(2, "No such file or directory", str(path))


def check_paths(
    paths: Iterable[str | os.PathLike[str]],
    *,
    select: Sequence[str] = (),
    ignore: Sequence[str] = (),
) -> list[Finding]:
    """Check every Python file under ``paths``; ``select``/``ignore`` take code prefixes (RA1)."""
    findings: list[Finding] = []
    sources: list[_Source] = []
    seen: set[Path] = set()
    for path in iter_python_files(paths):
        resolved = path.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        parsed = _parse(path)
        if isinstance(parsed, Finding):
            findings.append(parsed)
        else:
            sources.append(parsed)
    index = ProjectIndex(
        (source.path, source.tree, mentions_cancellation(source.data)) for source in sources
    )
    resolver = Resolver(index)
    for source in sources:
        findings.extend(_check_source(source, index, resolver))
    selected, ignored = tuple(select), tuple(ignore)
    return sorted(
        finding
        for finding in findings
        if (not selected or finding.code.startswith(selected))
        and not (ignored and finding.code.startswith(ignored))
    )


def _parse(path: Path) -> _Source | Finding:
    display = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Finding(display, 1, 1, "RA000", f"cannot read file: {exc.strerror or exc}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes warn; the code is still valid
            tree = ast.parse(data, filename=display)
    except SyntaxError as exc:
        line, col = exc.lineno or 1, exc.offset or 1
        return Finding(display, line, max(col, 1), "RA000", f"cannot parse: {exc.msg}")
    except (ValueError, UnicodeDecodeError, RecursionError, MemoryError) as exc:
        return Finding(display, 1, 1, "RA000", f"cannot parse: {exc}")
    return _Source(display, path.resolve(), data, tree, Comments(data))


def _check_source(source: _Source, index: ProjectIndex, resolver: Resolver) -> list[Finding]:
    module = index.at(source.path)
    if module is None:  # pragma: no cover - every parsed source is indexed
        return []
    # Cheap text tests first: a rule about tokens cannot fire in a file that never spells one,
    # and skipping those files keeps a run over a whole site-packages fast.
    text = source.data.lower()
    hits: list[Hit] = []
    try:
        if any(word in text for word in _TOKEN_WORDS):
            hits += _forwarding.check(module, resolver)
            hits += _unused.check(module, resolver)
        if b"except" in text:
            hits += _handlers.check(source.tree, source.comments)
        if b"cancellationtokensource" in text:
            hits += _sources.check(source.tree)
    except RecursionError:
        message = "cannot analyse: the code is nested too deeply"
        return [Finding(source.display, 1, 1, "RA000", message)]
    lines = source.data.splitlines()
    return [
        Finding(source.display, line, _column(lines, line, col_offset), code, message)
        for line, col_offset, code, message in set(hits)
        if not source.comments.suppresses(line, code)
    ]


def _column(lines: list[bytes], line: int, col_offset: int) -> int:
    """ast counts UTF-8 bytes; editors count characters, from 1."""
    if not 0 < line <= len(lines):
        return col_offset + 1
    return len(lines[line - 1][:col_offset].decode("utf-8", errors="replace")) + 1
