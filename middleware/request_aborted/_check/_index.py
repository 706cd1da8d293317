"""The project index: what every analysed module defines and imports, by name.

RA101 must see that ``self._repo.find(q)`` in ``services/search.py`` reaches a ``find`` in
``repositories/products.py`` that takes a token. The index records, per module, its top-level
functions, classes (methods and the types of ``self`` attributes) and imports; the resolver then
follows names through it. A name bound twice (``try: import x`` / ``except: x = None``, a
redefinition) is recorded as unknown: the checker reports nothing it cannot be sure of.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ._classes import ClassInfo
from ._signature import FunctionInfo
from ._syntax import decorator_names, walk_scope

__all__ = ["ImportRef", "ModuleInfo", "ProjectIndex", "Symbol", "import_bindings"]


@dataclass(frozen=True, slots=True)
class ImportRef:
    """An imported name: ``module`` for absolute imports, ``path`` (no suffix) for relative ones."""

    module: str | None
    path: Path | None
    attr: str | None


Symbol = FunctionInfo | ClassInfo | ImportRef


class ModuleInfo:
    """One analysed file; its namespace is read on first use.

    ``by_name``: whether parameters named ``token``/``*_token`` without annotation are tokens
    here (see ``is_token_param``).
    """

    def __init__(self, path: Path, name: str, tree: ast.Module, *, by_name: bool) -> None:
        self.path = path
        self.name = name
        self.tree = tree
        self.by_name = by_name
        self._symbols: dict[str, Symbol | None] | None = None

    @property
    def symbols(self) -> dict[str, Symbol | None]:
        if self._symbols is None:
            self._symbols = _collect_module(self)
        return self._symbols


class ProjectIndex:
    """All analysed modules, found by file path or by dotted name."""

    def __init__(self, modules: Iterable[tuple[Path, ast.Module, bool]]) -> None:
        """``modules``: each file's path, tree, and whether it mentions the library by name."""
        self._by_path: dict[Path, ModuleInfo] = {}
        self._by_name: dict[str, list[ModuleInfo]] = defaultdict(list)
        self._by_suffix: dict[str, list[ModuleInfo]] = defaultdict(list)
        for path, tree, by_name in modules:
            path = path.resolve()
            info = ModuleInfo(path, _module_name(path), tree, by_name=by_name)
            self._by_path[path] = info
            self._by_name[info.name].append(info)
            parts = [*path.parent.parts[1:], path.stem]
            if parts[-1] == "__init__":
                parts.pop()
            for start in range(max(0, len(parts) - 6), len(parts) - 1):
                self._by_suffix[".".join(parts[start:])].append(info)

    def at(self, path: Path) -> ModuleInfo | None:
        return self._by_path.get(path.resolve())

    def module(self, name: str) -> ModuleInfo | None:
        """The module an absolute import names, if exactly one analysed file can be it.

        Packages are named from their ``__init__.py`` chain; a namespace package (no
        ``__init__.py``) is matched by the tail of the file's path instead.
        """
        for table in (self._by_name, self._by_suffix):
            candidates = table.get(name, [])
            if len(candidates) == 1:
                return candidates[0]
            if candidates:
                return None
        return None

    def module_at(self, base: Path) -> ModuleInfo | None:
        """``base.py`` or ``base/__init__.py``: where a relative import leads."""
        return self.at(base.with_name(base.name + ".py")) or self.at(base / "__init__.py")

    def submodule(self, package: ModuleInfo, name: str) -> ModuleInfo | None:
        if package.path.name != "__init__.py":
            return None
        return self.module_at(package.path.parent / name)


def _module_name(path: Path) -> str:
    parts = [] if path.stem == "__init__" else [path.stem]
    parent = path.parent
    while (parent / "__init__.py").is_file() and parent != parent.parent:
        parts.insert(0, parent.name)
        parent = parent.parent
    return ".".join(parts) or path.parent.name


def import_bindings(node: ast.Import | ast.ImportFrom, path: Path) -> list[tuple[str, ImportRef]]:
    """The names an import statement binds in ``path``'s namespace, and what each refers to."""
    if isinstance(node, ast.Import):
        bindings = []
        for alias in node.names:
            if alias.asname is not None:
                bindings.append((alias.asname, ImportRef(alias.name, None, None)))
            else:
                top = alias.name.partition(".")[0]
                bindings.append((top, ImportRef(top, None, None)))
        return bindings
    module: str | None = node.module
    base: Path | None = None
    if node.level > 0:
        base = path.parent
        for _ in range(node.level - 1):
            base = base.parent
        if node.module:
            base = base.joinpath(*node.module.split("."))
        module = None
    return [
        (alias.asname or alias.name, ImportRef(module, base, alias.name))
        for alias in node.names
        if alias.name != "*"
    ]


def _collect_module(info: ModuleInfo) -> dict[str, Symbol | None]:
    found: dict[str, list[Symbol | None]] = defaultdict(list)
    for node in walk_scope(info.tree.body):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            found[node.id].append(None)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if "overload" not in decorator_names(node):
                found[node.name].append(FunctionInfo(node, node.name, info, "function"))
        elif isinstance(node, ast.ClassDef):
            found[node.name].append(ClassInfo(node.name, info, node))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for name, ref in import_bindings(node, info.path):
                found[name].append(ref)
    return {name: bound[0] if len(bound) == 1 else None for name, bound in found.items()}
