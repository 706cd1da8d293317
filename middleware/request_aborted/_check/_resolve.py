"""Following names through the index: what a call's callee is, and what signature it has.

The resolver answers "what is this expression?" with one of four values (an instance of an
analysed class, the class itself, a module, a function) or None for "don't know". None wins
every tie: a name bound to two different things, a base class outside the analysed files, a
decorator-built attribute. RA101 stays quiet on None, so an unresolved call is never a finding.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from ._classes import AttributeBinding, ClassInfo
from ._index import ImportRef, ModuleInfo, ProjectIndex
from ._signature import FunctionInfo, Signature
from ._syntax import last_name
from ._vocabulary import unwrap_annotation

__all__ = ["ClassRef", "FunctionRef", "Instance", "ModuleRef", "Resolver", "Value"]

# Bases that add no methods a call could reach: a class deriving from them is fully known.
_EMPTY_BASES = frozenset({"object", "Protocol", "Generic", "ABC", "Exception", "BaseException"})
_MAX_DEPTH = 24  # import chains and class hierarchies deeper than this are treated as unknown


@dataclass(frozen=True, slots=True)
class Instance:
    cls: ClassInfo


@dataclass(frozen=True, slots=True)
class ClassRef:
    cls: ClassInfo


@dataclass(frozen=True, slots=True)
class ModuleRef:
    name: str | None
    info: ModuleInfo | None


@dataclass(frozen=True, slots=True)
class FunctionRef:
    func: FunctionInfo


Value = Instance | ClassRef | ModuleRef | FunctionRef


class Resolver:
    """Module-level knowledge: globals, imports, class hierarchies and attribute types."""

    def __init__(self, index: ProjectIndex) -> None:
        self.index = index
        self._attributes: dict[tuple[ClassInfo, str], Value | None] = {}
        self._lineages: dict[ClassInfo, list[ClassInfo] | None] = {}

    def global_value(self, module: ModuleInfo, name: str, depth: int = 0) -> Value | None:
        symbol = module.symbols.get(name)
        if isinstance(symbol, FunctionInfo):
            return FunctionRef(symbol)
        if isinstance(symbol, ClassInfo):
            return ClassRef(symbol)
        if isinstance(symbol, ImportRef):
            return self.imported(symbol, depth + 1)
        return None

    def imported(self, ref: ImportRef, depth: int = 0) -> Value | None:
        if depth > _MAX_DEPTH:
            return None
        if ref.path is not None:
            target = self.index.module_at(ref.path)
        else:
            target = self.index.module(ref.module) if ref.module else None
        if ref.attr is None:
            return ModuleRef(ref.module, target)
        if target is None:
            return None
        if ref.attr in target.symbols:
            return self.global_value(target, ref.attr, depth + 1)
        submodule = self.index.submodule(target, ref.attr)
        return ModuleRef(None, submodule) if submodule is not None else None

    def member(self, value: Value | None, attr: str) -> Value | None:
        """The value of ``value.attr`` when it is not a method call."""
        if isinstance(value, ModuleRef):
            if value.info is not None and attr in value.info.symbols:
                return self.global_value(value.info, attr)
            dotted = f"{value.name}.{attr}" if value.name else None
            if value.info is not None:
                submodule = self.index.submodule(value.info, attr)
                if submodule is not None:
                    return ModuleRef(dotted, submodule)
            return ModuleRef(dotted, self.index.module(dotted)) if dotted else None
        if isinstance(value, Instance):
            return self.attribute(value.cls, attr)
        return None

    def type_of(self, module: ModuleInfo, annotation: ast.expr | None) -> ClassInfo | None:
        """The analysed class an annotation names (``Repo``, ``"Repo"``, ``Repo | None``...)."""
        node = unwrap_annotation(annotation)
        if isinstance(node, ast.Subscript):
            node = node.value  # Repository[Product] is a Repository
        value = self.expression(module, node) if node is not None else None
        return value.cls if isinstance(value, ClassRef) else None

    def expression(self, module: ModuleInfo, node: ast.expr) -> Value | None:
        """Evaluate a name, attribute chain or call at module level (no locals in sight)."""
        if isinstance(node, ast.Name):
            return self.global_value(module, node.id)
        if isinstance(node, ast.Attribute):
            return self.member(self.expression(module, node.value), node.attr)
        if isinstance(node, ast.Call):
            return self.call_result(self.expression(module, node.func))
        if isinstance(node, ast.Await):
            return self.expression(module, node.value)
        return None

    def call_result(self, callee: Value | None) -> Value | None:
        if isinstance(callee, ClassRef):
            return Instance(callee.cls)
        if isinstance(callee, FunctionRef):
            returned = self.type_of(callee.func.module, callee.func.node.returns)
            return Instance(returned) if returned is not None else None
        return None

    def attribute(self, cls: ClassInfo, attr: str) -> Value | None:
        """The type of ``instance.attr``, from assignments and annotations in the hierarchy."""
        key = (cls, attr)
        if key not in self._attributes:
            self._attributes[key] = None  # also the answer while this very lookup is running
            self._attributes[key] = self._attribute(cls, attr)
        return self._attributes[key]

    def _attribute(self, cls: ClassInfo, attr: str) -> Value | None:
        for owner in self.lineage(cls) or [cls]:
            if attr in owner.attributes:
                values = {self._binding_value(owner, b) for b in owner.attributes[attr]}
                return values.pop() if len(values) == 1 else None
            method = owner.methods.get(attr)
            if method is not None and method.kind == "property":
                returned = self.type_of(owner.module, method.node.returns)
                return Instance(returned) if returned is not None else None
            if attr in owner.methods:
                return None
        return None

    def _binding_value(self, owner: ClassInfo, binding: AttributeBinding) -> Value | None:
        if binding.expr is None:
            return None
        if binding.is_annotation:
            cls = self.type_of(owner.module, binding.expr)
            return Instance(cls) if cls is not None else None
        value = self.expression(owner.module, binding.expr)
        return value if isinstance(value, Instance) else None

    def lineage(self, cls: ClassInfo) -> list[ClassInfo] | None:
        """The class and its analysed ancestors, depth first; None if any base is unknown.

        Depth first is not the C3 order, but with every base known the difference only matters
        for diamonds that override the same method differently, which a linter may ignore.
        """
        if cls not in self._lineages:
            self._lineages[cls] = None  # a class that inherits from itself has no lineage
            self._lineages[cls] = self._lineage(cls)
        return self._lineages[cls]

    def _lineage(self, cls: ClassInfo) -> list[ClassInfo] | None:
        lineage: list[ClassInfo] = []
        pending = [cls]
        while pending:
            current = pending.pop(0)
            if current in lineage:
                continue
            if len(lineage) > _MAX_DEPTH:
                return None
            lineage.append(current)
            bases: list[ClassInfo] = []
            for base in current.node.bases:
                name = last_name(base.value if isinstance(base, ast.Subscript) else base)
                if name in _EMPTY_BASES:
                    continue
                resolved = self.type_of(current.module, base)
                if resolved is None:
                    return None
                bases.append(resolved)
            pending[:0] = bases
        return lineage

    def find_method(
        self, cls: ClassInfo, name: str, skip_self: bool = False
    ) -> FunctionInfo | None:
        """The method ``name`` resolves to on ``cls`` (or on its bases, for ``super()``)."""
        lineage = self.lineage(cls)
        if lineage is None:
            # An unknown base can only hide a method the class does not define itself.
            lineage = [] if skip_self else [cls]
        for owner in lineage[1:] if skip_self else lineage:
            if name in owner.methods:
                return owner.methods[name]
            if name in owner.attributes:
                return None
        return None

    def constructor(self, cls: ClassInfo) -> Signature | None:
        init = self.find_method(cls, "__init__")
        if init is not None and init.kind == "method":
            signature = init.signature(1)
            return Signature(cls.name, signature.slots)
        return None
