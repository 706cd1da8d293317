"""What a function binds: its names (for typing receivers) and its tokens (for RA101/RA103).

Every binding of a name is recorded: parameters, assignments, ``with ... as``, imports, nested
``def``, loop and ``except`` targets. A name bound in a way the checker cannot type is recorded
as None, which makes the whole name unknown.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass

from ._index import ImportRef, ModuleInfo, import_bindings
from ._signature import FunctionInfo
from ._syntax import walk_scope
from ._vocabulary import is_critical_section, is_token_annotation, is_token_value, token_params

__all__ = [
    "ALWAYS",
    "Annotation",
    "Binding",
    "Position",
    "WithTarget",
    "collect_bindings",
    "collect_tokens",
]


@dataclass(frozen=True, slots=True)
class Annotation:
    """A local declared with a type (``repo: Repository = make()``): the annotation decides."""

    annotation: ast.expr


@dataclass(frozen=True, slots=True)
class WithTarget:
    """``with manager as name``: the name holds what entering the manager returns."""

    manager: ast.expr
    is_async: bool


Binding = ast.expr | ast.arg | Annotation | WithTarget | ImportRef | FunctionInfo | None
Position = tuple[int, int]
ALWAYS: Position = (0, 0)  # parameters and closure tokens: in scope from the first line


def collect_bindings(
    func: ast.FunctionDef | ast.AsyncFunctionDef, module: ModuleInfo
) -> dict[str, list[Binding]]:
    """Every name the function binds, with what it binds it to (None: something untyped)."""
    bindings: dict[str, list[Binding]] = defaultdict(list)
    args = func.args
    for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs):
        bindings[arg.arg].append(arg)
    for star in (args.vararg, args.kwarg):
        if star is not None:
            bindings[star.arg].append(None)
    recorded: set[int] = set()  # Name targets already bound with their value
    for node in walk_scope(func.body):
        if isinstance(node, ast.Assign | ast.NamedExpr | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    recorded.add(id(target))
                    if isinstance(node, ast.AnnAssign):
                        bindings[target.id].append(Annotation(node.annotation))
                    else:
                        bindings[target.id].append(node.value)
        elif isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                if isinstance(item.optional_vars, ast.Name):
                    recorded.add(id(item.optional_vars))
                    entered = WithTarget(item.context_expr, isinstance(node, ast.AsyncWith))
                    bindings[item.optional_vars.id].append(entered)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            if id(node) not in recorded:
                bindings[node.id].append(None)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            bindings[node.name].append(FunctionInfo(node, node.name, module, "function"))
        elif isinstance(node, ast.ClassDef):
            bindings[node.name].append(None)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            for name in node.names:
                bindings[name].append(None)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for name, ref in import_bindings(node, module.path):
                bindings[name].append(ref)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bindings[node.name].append(None)
        elif isinstance(node, ast.Lambda):
            for arg in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs):
                bindings[arg.arg].append(None)
        elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
            bindings[node.name].append(None)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bindings[node.rest].append(None)
    return dict(bindings)


def collect_tokens(
    func: ast.FunctionDef | ast.AsyncFunctionDef, *, by_name: bool
) -> list[tuple[str, Position]]:
    """Tokens the function holds: its parameters, then locals bound from token-producing code."""
    params = token_params(func, by_name=by_name)
    tokens = [(arg.arg, ALWAYS) for arg in params if not arg.arg.startswith("_")]
    for node in walk_scope(func.body):
        if isinstance(node, ast.Assign | ast.NamedExpr) and is_token_value(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    tokens.append((target.id, _end(node.value)))
        elif (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.value is not None
            and (is_token_value(node.value) or is_token_annotation(node.annotation))
        ):
            tokens.append((node.target.id, _end(node.value)))
        elif isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                bound = item.optional_vars
                if is_critical_section(item.context_expr) and isinstance(bound, ast.Name):
                    tokens.append((bound.id, _end(bound)))
    return tokens


def _end(node: ast.expr) -> Position:
    return (node.end_lineno or node.lineno, node.end_col_offset or node.col_offset)
