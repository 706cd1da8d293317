"""AST helpers the rules share: dotted names, one scope's nodes, and where each function lives.

Every walk here is iterative: the checker runs over whole dependency trees and must not die of
recursion on a generated file with a thousand nested expressions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = [
    "FunctionNode",
    "FunctionSite",
    "base_name",
    "decorator_names",
    "dotted_name",
    "is_trivial_body",
    "iter_functions",
    "last_name",
    "walk_scope",
    "walk_statements",
]

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def dotted_name(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attribute lookups on a name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def last_name(node: ast.AST) -> str | None:
    """The name a reference ends in (``CancellationToken`` for ``ra.CancellationToken``)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def base_name(base: ast.expr) -> str | None:
    """The class a base names: ``Protocol`` for ``Protocol[T]`` and ``typing.Protocol``."""
    return last_name(base.value if isinstance(base, ast.Subscript) else base)


def decorator_names(func: FunctionNode | ast.ClassDef) -> set[str]:
    """Last names of the decorators: ``@x(...)`` reads as ``x``, ``@prop.setter`` as ``setter``."""
    names: set[str] = set()
    for decorator in func.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = last_name(target)
        if name is not None:
            names.add(name)
    return names


def walk_scope(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Pre-order walk of one scope.

    A nested ``def`` or ``class`` is yielded, and so are its decorators, defaults and bases (they
    run here, at definition time), but not its body: that is a scope of its own. Lambdas and
    comprehensions are walked into, since their code runs as part of this scope's work.
    """
    stack = list(reversed(list(nodes)))
    while stack:
        node = stack.pop()
        yield node
        children: list[ast.AST]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            defaults = [d for d in node.args.kw_defaults if d is not None]
            children = [*node.decorator_list, *node.args.defaults, *defaults]
        elif isinstance(node, ast.ClassDef):
            children = [*node.decorator_list, *node.bases, *node.keywords]
        else:
            children = list(ast.iter_child_nodes(node))
        stack.extend(reversed(children))


@dataclass(frozen=True, eq=False, slots=True)
class FunctionSite:
    """A function and what surrounds it: its class (if a method) and its enclosing function."""

    node: FunctionNode
    owner: ast.ClassDef | None
    outer: FunctionSite | None


def iter_functions(tree: ast.Module) -> Iterator[FunctionSite]:
    """Every function in the module, each before the functions nested in it.

    Only statement lists are searched: a ``def`` is a statement, so it cannot hide in an
    expression, and skipping expressions makes this several times faster on real code.
    """
    pending: list[tuple[ast.AST, ast.ClassDef | None, FunctionSite | None]] = [(tree, None, None)]
    while pending:
        node, owner, outer = pending.pop()
        for child in _statements(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                site = FunctionSite(child, owner, outer)
                yield site
                pending.append((child, None, site))
            elif isinstance(child, ast.ClassDef):
                pending.append((child, child, outer))
            else:
                pending.append((child, owner, outer))


def walk_statements(tree: ast.Module) -> Iterator[ast.AST]:
    """Every statement, ``except`` handler and ``case`` in the module, at any depth."""
    pending = list(_statements(tree))
    while pending:
        node = pending.pop()
        yield node
        pending.extend(_statements(node))


def _statements(node: ast.AST) -> Iterator[ast.AST]:
    for name in ("body", "orelse", "finalbody", "handlers", "cases"):
        children = getattr(node, name, None)
        if isinstance(children, list):
            yield from children


def is_trivial_body(body: list[ast.stmt]) -> bool:
    """A stub: only a docstring, ``...``, ``pass`` or ``raise NotImplementedError``."""
    for statement in body:
        if isinstance(statement, ast.Pass):
            continue
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue
        if isinstance(statement, ast.Raise) and statement.exc is not None:
            exc = statement.exc.func if isinstance(statement.exc, ast.Call) else statement.exc
            if last_name(exc) == "NotImplementedError":
                continue
        return False
    return True
