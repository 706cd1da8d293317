"""Binding a ``CancellationToken`` parameter by its type, as ASP.NET Core minimal APIs do.

Starlette calls an endpoint with the request alone. ``@inject`` reads the endpoint's signature once
and, per call, passes the request to a parameter annotated ``Request`` (or named ``request``), the
request's token to one annotated ``CancellationToken``, the ``ApplicationLifetime`` to one annotated
so, and path parameters by name. The token
stays visible in the handler's signature, where the checker and the reader expect it.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import HTTPConnection, Request

from ._context import LIFETIME_KEY, scope_token
from ._lifetime import ApplicationLifetime
from ._token import CancellationToken

__all__ = ["inject"]

Endpoint = Callable[[Request], Any]
_Resolver = Callable[[Request], Any]


def inject(endpoint: Callable[..., Any]) -> Endpoint:
    """Wrap ``endpoint`` so Starlette can call it with the request alone.

    ``async def report(request: Request, name: str, token: CancellationToken)`` becomes a normal
    Starlette endpoint: ``Route("/reports/{name}", inject(report))``. Sync ``def`` endpoints stay
    sync, so Starlette still runs them in the thread pool.
    """
    resolvers = _resolvers(endpoint)

    def arguments(request: Request) -> dict[str, Any]:
        return {name: resolve(request) for name, resolve in resolvers}

    if inspect.iscoroutinefunction(endpoint):

        @functools.wraps(endpoint)
        async def async_endpoint(request: Request) -> Any:
            result: Awaitable[Any] = endpoint(**arguments(request))
            return await result

        del async_endpoint.__wrapped__  # Starlette must see (request), not the original signature
        return async_endpoint

    @functools.wraps(endpoint)
    def sync_endpoint(request: Request) -> Any:
        return endpoint(**arguments(request))

    del sync_endpoint.__wrapped__
    return sync_endpoint


def _resolvers(endpoint: Callable[..., Any]) -> list[tuple[str, _Resolver]]:
    try:
        hints = typing.get_type_hints(endpoint)
    except Exception:  # unresolvable forward references: fall back to the annotations' text
        hints = dict(getattr(endpoint, "__annotations__", {}))
    resolvers: list[tuple[str, _Resolver]] = []
    for name, parameter in inspect.signature(endpoint).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"@inject cannot bind *{name} of {endpoint.__qualname__}")
        resolvers.append((name, _resolver(name, hints.get(name), parameter)))
    return resolvers


def _resolver(name: str, hint: Any, parameter: inspect.Parameter) -> _Resolver:
    if _is(hint, CancellationToken):
        return _token
    if _is(hint, ApplicationLifetime):
        return _lifetime
    if _is(hint, HTTPConnection) or (hint is None and name == "request"):
        return _request
    default = parameter.default

    def path_parameter(request: Request) -> Any:
        try:
            return request.path_params[name]
        except KeyError:
            if default is inspect.Parameter.empty:
                raise TypeError(f"no path parameter or binding for {name!r}") from None
            return default

    return path_parameter


def _is(hint: Any, cls: type) -> bool:
    if isinstance(hint, str):
        return hint == cls.__name__ or hint.endswith("." + cls.__name__)
    return isinstance(hint, type) and issubclass(hint, cls)


def _token(request: Request) -> CancellationToken:
    return scope_token(request.scope)


def _lifetime(request: Request) -> ApplicationLifetime:
    lifetime: ApplicationLifetime | None = request.scope.get("state", {}).get(LIFETIME_KEY)
    if lifetime is None:
        raise RuntimeError(
            "no ApplicationLifetime: wrap the app's lifespan with "
            "Starlette(lifespan=lifetime.lifespan(your_lifespan))"
        )
    return lifetime


def _request(request: Request) -> Request:
    return request
