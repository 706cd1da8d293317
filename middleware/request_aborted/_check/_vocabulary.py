"""The library's names as the checker recognises them in source text, without importing them.

The checker must run on code whose imports are not installed (a CI job with only the linter), so
it knows ``CancellationToken`` and friends by name: ``CancellationToken``, ``ra.CancellationToken``
and the string ``"CancellationToken"`` all count, wherever they were imported from.
"""

from __future__ import annotations

import ast

from ._syntax import FunctionNode, dotted_name, last_name

__all__ = [
    "caught_cancellation",
    "is_critical_section",
    "is_none_token",
    "is_source_creation",
    "is_token_annotation",
    "is_token_param",
    "is_token_value",
    "mentions_cancellation",
    "token_params",
    "unwrap_annotation",
]

TOKEN_TYPES = frozenset({"CancellationToken", "RequestAborted"})
TOKEN_PARAM_NAMES = frozenset({"token", "cancellation_token", "stopping_token"})
UNAMBIGUOUS_PARAM_NAMES = frozenset({"cancellation_token", "stopping_token"})
_LIBRARY_WORDS = (b"CancellationToken", b"RequestAborted", b"request_aborted", b"current_token")
TOKEN_FACTORIES = frozenset({"current_token", "request_aborted"})
SOURCE_TYPE = "CancellationTokenSource"
CANCELLATION_EXCEPTIONS = frozenset({"OperationCancelled", "CancelledError", "BaseException"})
_NONE_WRAPPERS = frozenset({"Optional", "Union"})


def unwrap_annotation(node: ast.expr | None) -> ast.expr | None:
    """What a parameter holds, with the wrappers that don't change it removed.

    ``"X"``, ``Optional[X]``, ``X | None``, ``Union[X, None]`` and ``Annotated[X, ...]`` all hold an
    ``X``. A union of two real types holds neither for sure, so it stays as it is.
    """
    for _ in range(32):  # bounded: a string annotation may contain another string annotation
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value.strip(), mode="eval").body
            except SyntaxError:
                return None
            continue
        if isinstance(node, ast.Subscript):
            wrapper = last_name(node.value)
            members = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            if wrapper == "Annotated" and members:
                node = members[0]
                continue
            if wrapper in _NONE_WRAPPERS:
                real = [m for m in members if not _is_none(m)]
                if len(real) == 1:
                    node = real[0]
                    continue
            return node
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            real = [m for m in _union_members(node) if not _is_none(m)]
            if len(real) == 1:
                node = real[0]
                continue
        return node
    return None


def _union_members(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return [*_union_members(node.left), *_union_members(node.right)]
    return [node]


def _is_none(node: ast.expr) -> bool:
    return (isinstance(node, ast.Constant) and node.value is None) or last_name(node) == "None"


def is_token_annotation(node: ast.expr | None) -> bool:
    """Whether an annotation declares a token (``RequestAborted`` is the FastAPI alias)."""
    return last_name(unwrap_annotation(node) or ast.Pass()) in TOKEN_TYPES


def is_token_param(arg: ast.arg, *, by_name: bool = True) -> bool:
    """A token by type, or by a conventional name when the annotation doesn't say otherwise.

    ``token`` and ``*_token`` alone are weak evidence (a tokenizer's token, an OAuth
    ``access_token``, a ``page_token``), so they count only with ``by_name``: in files that
    mention the library at all. ``cancellation_token`` and ``stopping_token`` always count.
    """
    if arg.annotation is not None:
        return is_token_annotation(arg.annotation)
    if arg.arg in UNAMBIGUOUS_PARAM_NAMES:
        return True
    return by_name and (arg.arg in TOKEN_PARAM_NAMES or arg.arg.endswith("_token"))


def token_params(func: FunctionNode, *, by_name: bool = True) -> list[ast.arg]:
    """The parameters a caller passes a token to, in signature order (``*args`` never counts)."""
    args = func.args
    return [
        arg
        for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs)
        if is_token_param(arg, by_name=by_name)
    ]


def mentions_cancellation(source: bytes) -> bool:
    """Whether a file spells any of the library's names: then ``token`` means our token."""
    return any(word in source for word in _LIBRARY_WORDS)


def is_token_value(node: ast.expr) -> bool:
    """An expression that produces a token: ``source.token``, ``current_token()``, and the like."""
    if isinstance(node, ast.Attribute):
        return node.attr == "token"
    if isinstance(node, ast.Call):
        return last_name(node.func) in TOKEN_FACTORIES
    return False


def is_none_token(node: ast.expr) -> bool:
    """``CancellationToken.NONE``, the token that never fires."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "NONE"
        and last_name(node.value) == "CancellationToken"
    )


def is_critical_section(node: ast.expr) -> bool:
    """``token.critical_section(...)``, whose ``as`` target is the token to use inside it."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "critical_section"
    )


def is_source_creation(node: ast.AST) -> bool:
    """``CancellationTokenSource(...)`` or ``CancellationTokenSource.linked(...)``."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if last_name(func) == SOURCE_TYPE:
        return True
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "linked"
        and last_name(func.value) == SOURCE_TYPE
    )


def caught_cancellation(handler: ast.ExceptHandler) -> str | None:
    """How the handler catches cancellation, worded for the message, or None if it doesn't."""
    if handler.type is None:
        return "bare `except:`"
    caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    for exc in caught:
        if last_name(exc) in CANCELLATION_EXCEPTIONS:
            name = dotted_name(exc) or last_name(exc)
            return f"`except {name}`"
    return None
