"""Request timeouts in the manner of ASP.NET Core 8's RequestTimeouts middleware.

A default timeout (off unless configured) and named policies live on the middleware; an endpoint
overrides them with ``@request_timeout(5)``, ``@request_timeout("reports")`` or
``@request_timeout(None)``. Routing happens inside the middleware, so the decorator cannot be read
up front: it wraps the endpoint and re-arms the request's timer when the endpoint starts, counting
from the moment the request arrived. An inbound deadline header may shorten any of these, never
lengthen them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ._context import current_request
from ._order import route_decorator_below

__all__ = ["TimeoutPolicy", "request_timeout", "resolve_policy"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class TimeoutPolicy:
    """A named timeout: ``timeout`` seconds (``None`` disables it) and the status sent on expiry."""

    timeout: float | None
    status_code: int = 504


def resolve_policy(
    timeout: float | str | None, policies: Mapping[str, TimeoutPolicy]
) -> tuple[TimeoutPolicy, str | None]:
    """Turn a decorator or middleware argument into a policy and its name."""
    if isinstance(timeout, str):
        try:
            return policies[timeout], timeout
        except KeyError:
            known = ", ".join(sorted(policies)) or "none"
            raise LookupError(
                f"unknown request timeout policy {timeout!r} (configured: {known}); "
                "add it with RequestAbortedMiddleware(policies={...})"
            ) from None
    if timeout is not None and timeout <= 0:
        raise ValueError(f"a request timeout must be positive or None, not {timeout!r}")
    return TimeoutPolicy(timeout), None


def request_timeout(timeout: float | str | None) -> Callable[[F], F]:
    """Give an endpoint its own timeout: seconds, a policy name, or ``None`` for no timeout.

    Works on Starlette endpoints and FastAPI path operations, ``async def`` and ``def`` alike;
    put it below the route decorator so the router registers the wrapped function (above it,
    it raises ``TypeError`` when applied, naming the right order).
    """
    if not isinstance(timeout, str | None) and timeout <= 0:
        raise ValueError(f"a request timeout must be positive or None, not {timeout!r}")

    def decorate(endpoint: F) -> F:
        route = route_decorator_below(endpoint, "request_timeout")
        if route is not None:
            raise TypeError(
                f"@request_timeout({timeout!r}) on {endpoint.__qualname__} is above {route}, so the"
                " route already holds the undecorated function and the timeout would never apply:"
                f" put @request_timeout({timeout!r}) below {route}, right above the def"
            )
        if inspect.iscoroutinefunction(endpoint):

            @functools.wraps(endpoint)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                current_request().set_timeout(timeout)
                return await endpoint(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(endpoint)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            current_request().set_timeout(timeout)
            return endpoint(*args, **kwargs)

        return sync_wrapper  # type: ignore[return-value]

    return decorate
