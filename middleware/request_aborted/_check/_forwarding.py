"""RA101 and RA103: a token is in scope, but the call does not hand it on.

This is .NET's CA2016 ("forward the CancellationToken parameter to methods that take one"). The
callee is looked up across every analysed file; a call whose callee cannot be found is skipped,
because a linter that guesses teaches people to ignore it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ._index import ModuleInfo
from ._locals import FunctionScope
from ._resolve import Resolver
from ._syntax import FunctionSite, iter_functions, walk_scope
from ._vocabulary import is_none_token
from .rules import Hit, hit

__all__ = ["check"]


def check(module: ModuleInfo, resolver: Resolver) -> Iterator[Hit]:
    scopes: dict[FunctionSite, FunctionScope] = {}
    for site in iter_functions(module.tree):
        outer = scopes.get(site.outer) if site.outer is not None else None
        scope = FunctionScope(resolver, module, site, outer)
        scopes[site] = scope
        if not scope.tokens:
            continue
        for node in walk_scope(site.node.body):
            if isinstance(node, ast.Call):
                yield from _check_call(node, scope)


def _check_call(call: ast.Call, scope: FunctionScope) -> Iterator[Hit]:
    tokens = scope.tokens_at(call)
    if not tokens:
        return
    token = tokens[0]
    for argument in (*call.args, *(keyword.value for keyword in call.keywords)):
        if is_none_token(argument):
            yield hit(
                argument,
                "RA103",
                f"`CancellationToken.NONE` passed while `{token}` is in scope: pass `{token}`, "
                "or add `# noqa: RA103` where the work must not be cancelled",
            )
    signature = scope.signature(call)
    if signature is None or not signature.slots or signature.is_satisfied_by(call):
        return
    parameter = signature.slots[0].name
    yield hit(
        call,
        "RA101",
        f"`{signature.qualname}()` accepts a cancellation token (`{parameter}`) "
        f"but none is passed: forward `{token}`",
    )
