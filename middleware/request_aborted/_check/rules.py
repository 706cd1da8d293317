"""The checker's rule catalogue: .NET's CA2016 and friends, for Python's cancellation tokens.

A token only cancels what it reaches. Every rule below finds a place where the request's token stops
short of the work it should stop, or where cancellation itself is lost on the way back up:

    RA000  the file could not be parsed (syntax error, bad encoding); nothing in it was checked.
    RA101  a call to a function that accepts a token, made where a token is in scope, passes none.
           The callee runs to completion after the client left (CA2016).
    RA102  a token parameter is never used. The signature promises cancellation the body ignores.
           Exempt: parameters starting with ``_``, abstract methods, overloads, Protocol members,
           overrides of an analysed base class, and stub bodies (``...``, ``pass``, a docstring).
    RA103  ``CancellationToken.NONE`` is passed while a real token is in scope. Sometimes right (a
           commit that must finish): then say so with ``# noqa: RA103``.
    RA104  an ``except`` clause that catches cancellation (``OperationCancelled``,
           ``CancelledError``, ``BaseException``, bare ``except:``) and does not re-raise. The task
           keeps running as if nothing happened; mark a deliberate conversion with
           ``# deliberate`` on the except line.
    RA105  a ``CancellationTokenSource`` that is never closed: created at module or class level (a
           static source whose callback list grows forever), or in a function without ``with``,
           ``.close()``, returning it or storing it elsewhere.

Suppress one finding with ``# noqa: RA101`` (or a bare ``# noqa``) or ``# request-aborted:
ignore[RA101]`` on the reported line. docs/checker.md has an example of each rule.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["RULES", "Finding", "Hit", "Rule", "hit"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule's code and the one-line summary `request-aborted rules` prints."""

    code: str
    name: str
    summary: str


RULES: dict[str, Rule] = {
    rule.code: rule
    for rule in (
        Rule("RA000", "unparseable-file", "the file could not be parsed, so it was not checked"),
        Rule("RA101", "token-not-forwarded", "a callee accepts a token but none is passed to it"),
        Rule("RA102", "unused-token-parameter", "a token parameter is never used"),
        Rule("RA103", "none-token-with-token-in-scope", "CancellationToken.NONE passed instead"),
        Rule("RA104", "swallowed-cancellation", "an except clause swallows cancellation"),
        Rule("RA105", "unclosed-token-source", "a CancellationTokenSource is never closed"),
    )
}


class Hit(NamedTuple):
    """A rule's raw result: an AST position (1-based line, 0-based UTF-8 byte column)."""

    line: int
    col_offset: int
    code: str
    message: str


def hit(node: ast.expr | ast.stmt | ast.arg | ast.excepthandler, code: str, message: str) -> Hit:
    """Place a finding where the node starts, the way ruff places its diagnostics."""
    return Hit(node.lineno, node.col_offset, code, message)


@dataclass(frozen=True, order=True, slots=True)
class Finding:
    """A reported problem, positioned for humans and editors (1-based line and column)."""

    path: str
    line: int
    col: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col} {self.code} {self.message}"

    def as_dict(self) -> dict[str, str | int]:
        return {
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "code": self.code,
            "message": self.message,
        }
