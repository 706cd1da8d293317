"""RA102: a token parameter the body never reads.

A signature that takes a token promises callers that the work stops when it fires. A body that
ignores it breaks the promise silently: the caller did everything right and still waits. Stubs
and declarations (abstract methods, Protocol members, overloads, ``...`` bodies) and overrides of
an analysed base class are exempt: their signature is dictated from elsewhere.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ._classes import ClassInfo
from ._index import ModuleInfo
from ._resolve import Resolver
from ._syntax import FunctionSite, base_name, decorator_names, is_trivial_body, iter_functions
from ._vocabulary import token_params
from .rules import Hit, hit

__all__ = ["check"]

_DECLARATIONS = frozenset({"abstractmethod", "abstractproperty", "overload", "override"})


def check(module: ModuleInfo, resolver: Resolver) -> Iterator[Hit]:
    for site in iter_functions(module.tree):
        candidates = token_params(site.node, by_name=module.by_name)
        params = [arg for arg in candidates if not arg.arg.startswith("_")]
        if not params or _is_exempt(site, module, resolver):
            continue
        read = _names_read(site.node)
        if "locals" in read or "vars" in read:
            continue  # the body may hand every parameter on at once
        for arg in params:
            if arg.arg not in read:
                yield hit(
                    arg,
                    "RA102",
                    f"token parameter `{arg.arg}` is never used: forward it to the work it "
                    f"should cancel, or rename it `_{arg.arg}` if ignoring it is deliberate",
                )


def _names_read(func: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Names the body reads or deletes, nested functions included (closures count as use)."""
    return {
        node.id
        for statement in func.body
        for node in ast.walk(statement)
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store)
    }


def _is_exempt(site: FunctionSite, module: ModuleInfo, resolver: Resolver) -> bool:
    func = site.node
    if is_trivial_body(func.body) or decorator_names(func) & _DECLARATIONS:
        return True
    owner = site.owner
    if owner is None:
        return False
    if any(base_name(base) == "Protocol" for base in owner.bases):
        return True
    cls = module.symbols.get(owner.name)
    if not isinstance(cls, ClassInfo) or cls.node is not owner:
        return False
    return resolver.find_method(cls, func.name, skip_self=True) is not None
