"""Binding a ``CancellationToken`` parameter by its type, as ASP.NET Core minimal APIs do.

Starlette calls an endpoint with the request alone. ``@inject`` reads the endpoint's signature once
and, per call, passes the request to a parameter annotated ``Request`` (or named ``request``), the
request's token to one annotated ``CancellationToken``, the ``ApplicationLifetime`` to one annotated
so, and every other parameter by name from the path parameters, else the query string (a plain
value: ``str``, ``int``, ``float``, ``bool``, ``UUID``, optionally ``| None``; a missing or
malformed query value is the client's mistake, a 400). The token stays visible in the handler's
signature, where the checker and the reader expect it.

A parameter it cannot bind (``*args``, ``**kwargs``, a type that is no plain value, such as a
session or a model) is a mistake in the code, not in a request, so ``@inject`` raises ``TypeError``
when it decorates, naming the parameter, not at the first request.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request

from ._context import scope_token
from ._lifetime import ApplicationLifetime, lifetime_of
from ._token import CancellationToken

__all__ = ["inject"]

Endpoint = Callable[[Request], Any]
_Resolver = Callable[[Request], Any]


def inject(endpoint: Callable[..., Any]) -> Endpoint:
    """Wrap ``endpoint`` so Starlette can call it with the request alone.

    Raises ``TypeError`` here, at decoration, for a parameter it cannot bind (module docstring).

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
        resolvers.append((name, _resolver(name, hints.get(name), parameter, endpoint.__qualname__)))
    return resolvers


def _resolver(name: str, hint: Any, parameter: inspect.Parameter, owner: str) -> _Resolver:
    if _is(hint, CancellationToken):
        return _token
    if _is(hint, ApplicationLifetime):
        return _lifetime
    if _is(hint, HTTPConnection) or (hint is None and name == "request"):
        return _request
    return _value(name, _value_type(name, hint, owner), parameter.default)


def _value_type(name: str, hint: Any, owner: str) -> Callable[[str], Any] | None:
    """How to convert a query value for ``hint``: ``None`` keeps the text; a bad hint raises."""
    if hint is None or isinstance(hint, str):  # unannotated, or a forward reference left as text
        return None
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        values = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(values) == 1:
            return _value_type(name, values[0], owner)
    elif hint in _CONVERTERS:
        return _CONVERTERS[hint]
    raise TypeError(
        f"@inject cannot bind parameter {name!r} of {owner} (annotated {hint!r}): it binds Request,"
        " WebSocket, CancellationToken and ApplicationLifetime by type, and path or query"
        " parameters by name as str, int, float, bool or UUID (optionally | None); make anything"
        " else inside the handler"
    )


def _value(name: str, convert: Callable[[str], Any] | None, default: Any) -> _Resolver:
    def value(request: Request) -> Any:
        path_params = request.path_params
        if name in path_params:
            return path_params[name]  # already converted by the route's convertor
        text = request.query_params.get(name)
        if text is None:
            if default is inspect.Parameter.empty:
                raise HTTPException(400, f"missing query parameter {name!r}")
            return default
        if convert is None:
            return text
        try:
            return convert(text)
        except ValueError:
            raise HTTPException(400, f"query parameter {name!r}: invalid value {text!r}") from None

    return value


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


_CONVERTERS: Final[dict[Any, Callable[[str], Any]]] = {
    str: str,
    int: int,
    float: float,
    bool: _boolean,
    uuid.UUID: uuid.UUID,
}


def _is(hint: Any, cls: type) -> bool:
    if isinstance(hint, str):
        return hint == cls.__name__ or hint.endswith("." + cls.__name__)
    return isinstance(hint, type) and issubclass(hint, cls)


def _token(request: Request) -> CancellationToken:
    return scope_token(request.scope)


def _lifetime(request: Request) -> ApplicationLifetime:
    lifetime = lifetime_of(request.scope)
    if lifetime is None:
        raise RuntimeError(
            "no ApplicationLifetime: wrap the app's lifespan with "
            "Starlette(lifespan=lifetime.lifespan(your_lifespan))"
        )
    return lifetime


def _request(request: Request) -> Request:
    return request
