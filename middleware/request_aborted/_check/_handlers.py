"""RA104: an ``except`` clause that catches cancellation and does not let it go on.

Cancellation is an exception travelling up to the code that asked for it: the middleware's edge
for a client that left, a task group for ``task.cancel()``. A handler that catches
``OperationCancelled``, ``CancelledError``, ``BaseException`` or everything, and carries on,
turns "stop" into "keep going as if it worked". Cleanup belongs in ``finally``; a handler that
converts cancellation on purpose (the edge turning it into a 499) says so with ``# deliberate``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ._suppress import Comments
from ._syntax import walk_scope, walk_statements
from ._vocabulary import caught_cancellation
from .rules import Hit, hit

__all__ = ["check"]


def check(tree: ast.Module, comments: Comments) -> Iterator[Hit]:
    for node in walk_statements(tree):
        if not isinstance(node, ast.ExceptHandler):
            continue
        caught = caught_cancellation(node)
        if caught is None or _reraises(node) or _is_marked(node, comments):
            continue
        yield hit(
            node,
            "RA104",
            f"{caught} swallows cancellation: re-raise it (`raise`), move cleanup to `finally`, "
            "or mark the line `# deliberate`",
        )


def _reraises(handler: ast.ExceptHandler) -> bool:
    """Any ``raise`` in the handler's own code counts: a conditional re-raise is a decision."""
    return any(isinstance(node, ast.Raise) for node in walk_scope(handler.body))


def _is_marked(handler: ast.ExceptHandler, comments: Comments) -> bool:
    """``# deliberate`` anywhere on the except clause, which may span lines for a long tuple."""
    last = handler.type.end_lineno if handler.type is not None else None
    return any(
        comments.is_deliberate(line) for line in range(handler.lineno, (last or handler.lineno) + 1)
    )
