"""Whether a decorator sits above the route decorator, read from the endpoint's own source.

``@app.get(...)`` registers the function it is given and returns it unchanged, so a wrapper
applied above it (decorators apply bottom up) never reaches the router: the route keeps calling
the bare function and the wrapper is silently ignored. Nothing on the function says it was
registered, so the order is read where it is written, in the ``def``'s decorator list, once,
when the decorator is applied. Any doubt (no source, an alias, a wrapper without source) means
no finding: this check may miss a mistake, it must never reject correct code.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from typing import Any, Final

__all__ = ["ROUTE_DECORATORS", "route_decorator_below"]

# Route decorators of FastAPI, APIRouter and Starlette (``app.route``, ``app.websocket_route``).
ROUTE_DECORATORS: Final = frozenset(
    {"get", "post", "put", "patch", "delete", "head", "options", "trace", "api_route", "route",
     "websocket", "websocket_route"}
)  # fmt: skip


def route_decorator_below(function: Callable[..., Any], decorator: str) -> str | None:
    """The route decorator applied before ``@decorator`` on ``function``, as written, if any.

    ``@decorator(...)`` written above ``@router.get(...)`` returns ``"@router.get(...)"``; the
    right order, no route decorator, or an unreadable source return ``None``.
    """
    try:
        source = textwrap.dedent(inspect.getsource(function))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None
    if not tree.body:
        return None
    definition = tree.body[0]
    if not isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef):
        return None
    if definition.name != getattr(function, "__name__", None):
        return None  # a wrapper's source, not the decorated function's
    names = [_called_name(node) for node in definition.decorator_list]
    if decorator not in names:
        return None
    ours = names.index(decorator)
    for node, name in zip(definition.decorator_list[ours + 1 :], names[ours + 1 :], strict=True):
        if name in ROUTE_DECORATORS and isinstance(node, ast.Call):
            return "@" + ast.unparse(node)
    return None


def _called_name(node: ast.expr) -> str | None:
    """``request_timeout`` for ``@request_timeout(5)`` or ``@ra.request_timeout(5)``."""
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    return None
