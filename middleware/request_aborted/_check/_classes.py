"""A class as the resolver sees it: its methods, and the types of its instances' attributes.

``self._repo`` is typed from what the class assigns to it: ``self._repo = repo`` with an
annotated parameter, ``self._repo: Repo = ...``, ``self._repo = Repo(...)``, a class-level
``_repo: Repo``, or a ``@property`` returning ``Repo``. Two different types make it unknown.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from ._signature import FunctionInfo
from ._syntax import FunctionNode, decorator_names, walk_scope

if TYPE_CHECKING:
    from ._index import ModuleInfo

__all__ = ["AttributeBinding", "ClassInfo"]

_PROPERTIES = frozenset({"property", "cached_property"})


@dataclass(frozen=True, slots=True)
class AttributeBinding:
    """One thing assigned to an attribute: an annotation, or a value to evaluate (None: unknown)."""

    expr: ast.expr | None
    is_annotation: bool


class ClassInfo:
    """A module-level class: its methods by name (None: not a plain method) and its attributes.

    Both tables are built on first use: most classes of a large tree are never looked into.
    """

    def __init__(self, name: str, module: ModuleInfo, node: ast.ClassDef) -> None:
        self.name = name
        self.module = module
        self.node = node

    @cached_property
    def _tables(self) -> tuple[dict[str, FunctionInfo | None], dict[str, list[AttributeBinding]]]:
        return _collect_class(self.node, self.module)

    @property
    def methods(self) -> dict[str, FunctionInfo | None]:
        return self._tables[0]

    @property
    def attributes(self) -> dict[str, list[AttributeBinding]]:
        return self._tables[1]


def _collect_class(
    node: ast.ClassDef, module: ModuleInfo
) -> tuple[dict[str, FunctionInfo | None], dict[str, list[AttributeBinding]]]:
    methods: dict[str, list[FunctionInfo | None]] = defaultdict(list)
    attributes: dict[str, list[AttributeBinding]] = defaultdict(list)
    for child in walk_scope(node.body):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            decorators = decorator_names(child)
            if decorators & {"overload", "setter", "deleter"}:
                continue
            kind = _method_kind(decorators)
            methods[child.name].append(
                FunctionInfo(child, f"{node.name}.{child.name}", module, kind)
            )
            if kind in ("method", "property"):
                _collect_self_attributes(child, attributes)
        elif isinstance(child, ast.AnnAssign) and isinstance(child.target, ast.Name):
            attributes[child.target.id].append(AttributeBinding(child.annotation, True))
        elif isinstance(child, ast.Assign):
            for target in child.targets:
                if isinstance(target, ast.Name):
                    attributes[target.id].append(AttributeBinding(child.value, False))
        if isinstance(child, ast.Name) and not isinstance(child.ctx, ast.Load):
            methods[child.id].append(None)
    unique = {name: bound[0] if len(bound) == 1 else None for name, bound in methods.items()}
    return unique, dict(attributes)


def _method_kind(decorators: set[str]) -> str:
    if "staticmethod" in decorators:
        return "staticmethod"
    if "classmethod" in decorators:
        return "classmethod"
    if decorators & _PROPERTIES:
        return "property"
    return "method"


def _collect_self_attributes(func: FunctionNode, into: dict[str, list[AttributeBinding]]) -> None:
    """Types of ``self.x`` from this method: ``self.x = param``, ``self.x: T``, ``self.x = C()``."""
    args = func.args
    positional = [*args.posonlyargs, *args.args]
    if not positional:
        return
    self_name = positional[0].arg
    annotations = {arg.arg: arg.annotation for arg in (*positional, *args.kwonlyargs)}

    def is_self_attribute(target: ast.expr) -> bool:
        value = target.value if isinstance(target, ast.Attribute) else None
        return isinstance(value, ast.Name) and value.id == self_name

    for node in walk_scope(func.body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Attribute):
            if is_self_attribute(node.target):
                into[node.target.attr].append(AttributeBinding(node.annotation, True))
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and is_self_attribute(target):
                    binding = _attribute_binding(node.value, annotations)
                    if binding is not None:
                        into[target.attr].append(binding)
                elif isinstance(target, ast.Tuple | ast.List):
                    for element in target.elts:
                        if isinstance(element, ast.Attribute) and is_self_attribute(element):
                            into[element.attr].append(AttributeBinding(None, False))


def _attribute_binding(
    value: ast.expr, annotations: dict[str, ast.expr | None]
) -> AttributeBinding | None:
    if isinstance(value, ast.Constant) and value.value is None:
        return None  # a reset to None says nothing about the attribute's type
    if isinstance(value, ast.Name):
        return AttributeBinding(annotations.get(value.id), True)
    if isinstance(value, ast.Call | ast.Attribute):
        return AttributeBinding(value, False)
    return AttributeBinding(None, False)
