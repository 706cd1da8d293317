"""One function's view: its local names, the tokens it holds, and the callees of its calls.

Locals are read flow-insensitively: a name assigned in two places to two different types is
unknown everywhere in the function. Tokens are the exception: a token bound half-way through a
function (``token = current_token()``) is only in scope for the calls after it.
"""

from __future__ import annotations

import ast

from ._bindings import ALWAYS, Annotation, Binding, WithTarget, collect_bindings, collect_tokens
from ._classes import ClassInfo
from ._index import ImportRef, ModuleInfo
from ._resolve import ClassRef, FunctionRef, Instance, Resolver, Value
from ._signature import FunctionInfo, Signature
from ._syntax import FunctionSite, decorator_names, last_name
from ._vocabulary import unwrap_annotation

__all__ = ["FunctionScope"]

_GENERATOR_MANAGERS = frozenset({"contextmanager", "asynccontextmanager"})
_GENERATORS = frozenset({"Iterator", "AsyncIterator", "Generator", "AsyncGenerator"})


class FunctionScope:
    """Names and tokens of one function, falling back to the enclosing function, then globals."""

    def __init__(
        self,
        resolver: Resolver,
        module: ModuleInfo,
        site: FunctionSite,
        outer: FunctionScope | None,
    ) -> None:
        self.resolver = resolver
        self.module = module
        self.site = site
        self.outer = outer
        self.cls = _owner_class(module, site)
        self._bindings: dict[str, list[Binding]] | None = None  # collected on first use
        self._cache: dict[str, Value | None] = {}
        self._evaluating: set[str] = set()
        self.tokens = collect_tokens(site.node, by_name=module.by_name)
        if outer is not None:
            self.tokens += [(name, ALWAYS) for name, _ in outer.tokens]

    def tokens_at(self, node: ast.expr) -> list[str]:
        """Token names in scope at ``node``, parameters first."""
        here = (node.lineno, node.col_offset)
        return [name for name, since in self.tokens if since <= here]

    def value_of_name(self, name: str) -> Value | None:
        if name in self._cache:
            return self._cache[name]
        if self._bindings is None:
            self._bindings = collect_bindings(self.site.node, self.module)
        if name in self._bindings:
            if name in self._evaluating:
                return None
            self._evaluating.add(name)
            try:
                values = {self._binding_value(b) for b in self._bindings[name]}
            finally:
                self._evaluating.discard(name)
            result = values.pop() if len(values) == 1 else None
        elif self.outer is not None:
            result = self.outer.value_of_name(name)
        else:
            result = self.resolver.global_value(self.module, name)
        self._cache[name] = result
        return result

    def evaluate(self, node: ast.expr) -> Value | None:
        if isinstance(node, ast.Name):
            return self.value_of_name(node.id)
        if isinstance(node, ast.Attribute):
            return self.resolver.member(self.evaluate(node.value), node.attr)
        if isinstance(node, ast.Await):
            return self.evaluate(node.value)
        if isinstance(node, ast.Call):
            callee = self.callee(node)
            if isinstance(callee, ClassInfo):
                return Instance(callee)
            if callee is not None:
                returned = self.resolver.type_of(callee[0].module, callee[0].node.returns)
                return Instance(returned) if returned is not None else None
        return None

    def signature(self, call: ast.Call) -> Signature | None:
        """The token slots of whatever ``call`` calls, or None when that is not known."""
        callee = self.callee(call)
        if isinstance(callee, ClassInfo):
            return self.resolver.constructor(callee)
        if callee is not None:
            function, bound = callee
            return function.signature(bound)
        return None

    def callee(self, call: ast.Call) -> tuple[FunctionInfo, int] | ClassInfo | None:
        """The function a call reaches and how many parameters it binds itself, or a class."""
        func = call.func
        resolver = self.resolver
        target: Value | None
        if isinstance(func, ast.Attribute):
            if _is_super(func.value) and self.cls is not None:
                method = resolver.find_method(self.cls, func.attr, skip_self=True)
                return _bind(method, via_instance=True)
            receiver = self.evaluate(func.value)
            if isinstance(receiver, Instance | ClassRef):
                method = resolver.find_method(receiver.cls, func.attr)
                return _bind(method, via_instance=isinstance(receiver, Instance))
            target = resolver.member(receiver, func.attr)
        elif isinstance(func, ast.Name):
            target = self.value_of_name(func.id)
        else:
            return None
        if isinstance(target, FunctionRef):
            return target.func, 0
        if isinstance(target, ClassRef):
            return target.cls
        if isinstance(target, Instance):
            return _bind(resolver.find_method(target.cls, "__call__"), via_instance=True)
        return None

    def _binding_value(self, binding: Binding) -> Value | None:
        if binding is None:
            return None
        if isinstance(binding, FunctionInfo):
            return FunctionRef(binding)
        if isinstance(binding, ImportRef):
            return self.resolver.imported(binding)
        if isinstance(binding, ast.arg):
            return self._parameter_value(binding)
        if isinstance(binding, Annotation):
            cls = self.resolver.type_of(self.module, binding.annotation)
            return Instance(cls) if cls is not None else None
        if isinstance(binding, WithTarget):
            return self._entered(binding)
        return self.evaluate(binding)

    def _entered(self, target: WithTarget) -> Value | None:
        """What ``as`` binds: a ``@contextmanager``'s yield type, or ``__enter__``'s return type."""
        resolver = self.resolver
        if isinstance(target.manager, ast.Call):
            callee = self.callee(target.manager)
            if isinstance(callee, tuple) and decorator_names(callee[0].node) & _GENERATOR_MANAGERS:
                function = callee[0]
                returns = unwrap_annotation(function.node.returns)
                if isinstance(returns, ast.Subscript) and last_name(returns.value) in _GENERATORS:
                    elements = returns.slice
                    yielded = elements.elts[0] if isinstance(elements, ast.Tuple) else elements
                    cls = resolver.type_of(function.module, yielded)
                    return Instance(cls) if cls is not None else None
                return None
        manager = self.evaluate(target.manager)
        if not isinstance(manager, Instance):
            return None
        enter = resolver.find_method(manager.cls, "__aenter__" if target.is_async else "__enter__")
        if enter is None:
            return None
        if last_name(unwrap_annotation(enter.node.returns) or ast.Pass()) == "Self":
            return manager
        cls = resolver.type_of(enter.module, enter.node.returns)
        return Instance(cls) if cls is not None else None

    def _parameter_value(self, arg: ast.arg) -> Value | None:
        node = self.site.node
        positional = [*node.args.posonlyargs, *node.args.args]
        if self.cls is not None and positional and positional[0] is arg:
            decorators = decorator_names(node)
            if "staticmethod" not in decorators:
                return ClassRef(self.cls) if "classmethod" in decorators else Instance(self.cls)
        cls = self.resolver.type_of(self.module, arg.annotation)
        return Instance(cls) if cls is not None else None


def _bind(method: FunctionInfo | None, *, via_instance: bool) -> tuple[FunctionInfo, int] | None:
    """How many leading parameters Python fills in for this kind of method."""
    if method is None or method.kind == "property":
        return None
    if method.kind == "staticmethod":
        return method, 0
    if method.kind == "classmethod":
        return method, 1
    return method, 1 if via_instance else 0


def _is_super(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "super"
        and not node.args
    )


def _owner_class(module: ModuleInfo, site: FunctionSite) -> ClassInfo | None:
    if site.owner is None:
        return None
    symbol = module.symbols.get(site.owner.name)
    return symbol if isinstance(symbol, ClassInfo) and symbol.node is site.owner else None
