"""The request being handled in this context: the one context variable the middleware sets.

A module of its own, importing nothing of the package, because two ends read it: ``_context``,
where application code asks for the current token, and ``_scope``, where a scope of the current
request's token is held by the request itself instead of joining the chain of scopes in a context
variable of its own (a set and a reset per scope, on a path every observed request takes), and
where critical sections then find it. ``_context`` imports the token module, which imports
``_scope``: the variable cannot live in ``_context``.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._context import RequestContext

__all__ = ["current"]

# One variable for the whole request keeps the per-request cost to a single set/reset.
current: ContextVar[RequestContext] = ContextVar("request_aborted.request")
