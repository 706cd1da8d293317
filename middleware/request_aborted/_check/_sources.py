"""RA105: a ``CancellationTokenSource`` nobody closes.

A source owns a timer (its timeout) and registrations on the tokens it is linked to; ``close()``
(or leaving its ``with`` block) releases both. A source that is never closed keeps its parent's
callback list growing for as long as the parent lives, and a module-level one lives forever:
.NET's "static CancellationTokenSource" incident, and one ``cancel()`` stops every caller at once.

A source handed on (returned, yielded, stored on ``self`` or in a container, passed to a call)
belongs to its new owner and is not reported here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ._vocabulary import is_source_creation
from .rules import Hit, hit

__all__ = ["check"]

ScopeNode = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
_STATIC = (
    "`CancellationTokenSource` at module or class level is never closed and shared by every "
    "caller: its callback list grows forever and one `cancel()` stops everyone; create one per "
    "operation with `with CancellationTokenSource(...) as source:`"
)
_LEAKED = (
    "`CancellationTokenSource` is never closed: its timer and its registrations on linked tokens "
    "outlive the operation; use `with CancellationTokenSource(...) as source:` or call `.close()`"
)


def check(tree: ast.Module) -> Iterator[Hit]:
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not is_source_creation(node):
            continue
        holder, parent = _effective_parent(node, parents)
        if isinstance(parent, ast.withitem) and parent.context_expr is holder:
            continue
        function = _enclosing_function(node, parents)
        if function is None:
            yield hit(node, "RA105", _STATIC)
        elif not _is_handed_on(holder, parent, function):
            yield hit(node, "RA105", _LEAKED)


def _effective_parent(node: ast.expr, parents: dict[ast.AST, ast.AST]) -> tuple[ast.expr, ast.AST]:
    """Skip ``a if c else b`` and ``a or b``: the source ends up wherever the whole goes."""
    parent = parents[node]
    while isinstance(parent, ast.IfExp | ast.BoolOp) and node is not getattr(parent, "test", None):
        node = parent
        parent = parents[parent]
    return node, parent


def _enclosing_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> ScopeNode | None:
    """The function whose run creates ``node``; defaults and decorators run in the outer scope."""
    child = node
    parent = parents.get(child)
    while parent is not None:
        if isinstance(parent, ast.Lambda) and child is parent.body:
            return parent
        if isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            child is statement for statement in parent.body
        ):
            return parent
        if isinstance(parent, ast.ClassDef):
            return None
        child, parent = parent, parents.get(parent)
    return None


def _is_handed_on(node: ast.expr, parent: ast.AST, function: ScopeNode) -> bool:
    if isinstance(parent, ast.Lambda | ast.Return | ast.Yield | ast.YieldFrom | ast.keyword):
        return True
    if isinstance(parent, ast.Call):
        return node is not parent.func
    if isinstance(parent, ast.Tuple | ast.List | ast.Set | ast.Dict):
        return True
    if isinstance(parent, ast.Assign | ast.AnnAssign | ast.NamedExpr):
        targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
        names = [target.id for target in targets if isinstance(target, ast.Name)]
        if len(names) < len(targets):
            return True  # self.source = ..., sources[key] = ..., unpacking: stored elsewhere
        return any(_is_released(name, function) for name in names)
    return False


def _is_released(name: str, function: ScopeNode) -> bool:
    """Whether the function closes the source bound to ``name`` or gives it to someone who will."""
    for node in ast.walk(function):
        if isinstance(node, ast.Attribute) and node.attr == "close" and _is_name(node.value, name):
            return True
        if isinstance(node, ast.withitem) and _is_name(node.context_expr, name):
            return True
        if isinstance(node, ast.Call) and any(
            _is_name(argument, name)
            for argument in (*node.args, *(keyword.value for keyword in node.keywords))
        ):
            return True
        returned = ast.Return | ast.Yield | ast.YieldFrom | ast.Assign | ast.AnnAssign
        if isinstance(node, returned) and node.value is not None and _holds(node.value, name):
            return True
        if isinstance(node, ast.Global | ast.Nonlocal) and name in node.names:
            return True
        if isinstance(node, ast.Tuple | ast.List) and isinstance(node.ctx, ast.Store):
            continue  # an unpacking target, not a container
        if isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Dict) and _holds(node, name):
            return True
    return False


def _holds(node: ast.expr, name: str) -> bool:
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_is_name(element, name) for element in node.elts)
    if isinstance(node, ast.Dict):
        return any(_is_name(value, name) for value in node.values)
    return _is_name(node, name)


def _is_name(node: ast.expr | None, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name
