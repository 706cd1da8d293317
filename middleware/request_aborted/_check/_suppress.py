"""Comment directives: ``# noqa``, ``# request-aborted: ignore[...]`` and ``# deliberate``.

Comments are read with ``tokenize``, not by searching the line, so a ``# noqa`` inside a string
literal suppresses nothing.
"""

from __future__ import annotations

import io
import re
import tokenize

__all__ = ["Comments"]

_NOQA = re.compile(r"#\s*noqa\b(?:\s*:\s*(?P<codes>[A-Z]+[0-9]+(?:[\s,]+[A-Z]+[0-9]+)*))?", re.I)
_IGNORE = re.compile(r"#\s*request-aborted\s*:\s*ignore\b(?:\[(?P<codes>[^\]]*)\])?", re.I)
_DELIBERATE = re.compile(r"#\s*deliberate\b", re.I)
_CODE = re.compile(r"[A-Z]+[0-9]+", re.I)


class Comments:
    """The comments of one file, by line number, tokenized only when first asked for."""

    def __init__(self, source: bytes) -> None:
        self._source = source
        self._comments: dict[int, str] | None = None

    @property
    def _by_line(self) -> dict[int, str]:
        if self._comments is None:
            self._comments = {}
            try:
                for token in tokenize.tokenize(io.BytesIO(self._source).readline):
                    if token.type == tokenize.COMMENT:
                        self._comments[token.start[0]] = token.string
            except (tokenize.TokenError, SyntaxError, UnicodeDecodeError):
                pass  # keep the comments read so far: a file ast accepted rarely gets here
        return self._comments

    def suppresses(self, line: int, code: str) -> bool:
        comment = self._by_line.get(line)
        if comment is None:
            return False
        for pattern in (_NOQA, _IGNORE):
            match = pattern.search(comment)
            if match is None:
                continue
            codes = match.group("codes")
            if codes is None or code.upper() in {c.upper() for c in _CODE.findall(codes)}:
                return True
        return False

    def is_deliberate(self, line: int) -> bool:
        return _DELIBERATE.search(self._by_line.get(line, "")) is not None
