"""What a call site needs to know about a callee: where, if anywhere, it takes a token."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._syntax import FunctionNode
from ._vocabulary import is_token_param

if TYPE_CHECKING:
    from ._index import ModuleInfo

__all__ = ["FunctionInfo", "Signature", "TokenSlot"]


@dataclass(frozen=True, slots=True)
class TokenSlot:
    """Where a callee takes a token: a positional index after binding, a keyword name, or both."""

    name: str
    position: int | None
    keyword: bool


@dataclass(frozen=True, slots=True)
class Signature:
    """The token-taking parts of a callee's signature, as seen from one call site."""

    qualname: str
    slots: tuple[TokenSlot, ...]

    def is_satisfied_by(self, call: ast.Call) -> bool:
        """Whether the call passes something in one of the token slots."""
        if any(isinstance(arg, ast.Starred) for arg in call.args):
            return True  # the token may be inside *args: trust the caller
        if any(keyword.arg is None for keyword in call.keywords):
            return True
        keywords = {keyword.arg for keyword in call.keywords}
        return any(
            (slot.keyword and slot.name in keywords)
            or (slot.position is not None and slot.position < len(call.args))
            for slot in self.slots
        )


@dataclass(eq=False)
class FunctionInfo:
    """A function or method; ``kind`` decides how many leading parameters a call binds itself."""

    node: FunctionNode
    qualname: str
    module: ModuleInfo
    kind: str  # "function", "method", "classmethod", "staticmethod" or "property"

    def signature(self, bound: int) -> Signature:
        """Token slots once ``bound`` leading parameters (``self``, ``cls``) are supplied."""
        args = self.node.args
        positional = [*args.posonlyargs, *args.args]
        slots = [
            TokenSlot(arg.arg, index - bound, index >= len(args.posonlyargs))
            for index, arg in enumerate(positional)
            if index >= bound and is_token_param(arg, by_name=self.module.by_name)
        ]
        slots += [
            TokenSlot(arg.arg, None, True)
            for arg in args.kwonlyargs
            if is_token_param(arg, by_name=self.module.by_name)
        ]
        return Signature(self.qualname, tuple(slots))
