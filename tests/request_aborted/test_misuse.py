"""Set-up mistakes fail loudly, where they are written, with a message that says the fix.

``@request_timeout`` above the route decorator, a bare ``CancellationToken`` parameter in FastAPI
and a parameter ``@inject`` cannot bind all raise when the module is imported (the decorator or
the route declaration), not at the first request; ``current_token()`` tells "no request here"
apart from "the middleware is missing".
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from request_aborted import (
    CancellationToken,
    RequestAbortedMiddleware,
    current_token,
    inject,
    request_timeout,
)
from request_aborted.fastapi import RequestAborted

# -- @request_timeout and the route decorator ----------------------------------------------------


def test_request_timeout_above_a_fastapi_route_decorator_raises_naming_the_right_order() -> None:
    app = FastAPI()

    with pytest.raises(TypeError) as raised:

        @request_timeout(5)
        @app.get("/reports/{id}")
        async def report(id: int) -> dict[str, int]:
            return {"id": id}

    message = str(raised.value)
    assert "is above @app.get('/reports/{id}')" in message
    assert "put @request_timeout(5) below @app.get('/reports/{id}')" in message


def test_request_timeout_above_any_api_router_route_decorator_raises_too() -> None:
    router = APIRouter()
    with pytest.raises(TypeError, match=r"below @router\.post\('/orders'\)"):

        @request_timeout("slow")
        @router.post("/orders")
        async def place() -> None: ...

    with pytest.raises(TypeError, match=r"below @router\.api_route\('/x', methods=\['GET'\]\)"):

        @request_timeout(None)
        @router.api_route("/x", methods=["GET"])
        async def plain() -> None: ...


def test_request_timeout_below_the_route_decorator_applies_to_the_request() -> None:
    app = FastAPI()
    app.add_middleware(RequestAbortedMiddleware)

    @app.get("/slow")
    @request_timeout(0.05)
    async def slow(token: RequestAborted) -> dict[str, str]:
        async with token.scope():
            await asyncio.sleep(30)
        return {"finished": "yes"}

    with TestClient(app) as client:
        assert client.get("/slow").status_code == 504


# -- a bare CancellationToken in FastAPI ---------------------------------------------------------


def test_a_bare_cancellation_token_parameter_in_fastapi_raises_pointing_to_request_aborted() -> (
    None
):
    app = FastAPI()

    with pytest.raises(TypeError, match=r"annotate it RequestAborted \(from request_aborted"):

        @app.get("/report")
        async def report(token: CancellationToken) -> dict[str, str]:
            return {}


# -- @inject checks its parameters when it decorates -----------------------------------------------


def test_inject_rejects_a_parameter_it_cannot_bind_when_it_decorates() -> None:
    async def report(request: Request, session: AsyncSession) -> JSONResponse:
        return JSONResponse({})

    with pytest.raises(TypeError, match=r"@inject cannot bind parameter 'session' of .*report"):
        inject(report)

    def variadic(request: Request, *args: object) -> JSONResponse:
        return JSONResponse({})

    with pytest.raises(TypeError, match=r"cannot bind \*args"):
        inject(variadic)


def test_inject_binds_query_parameters_by_name_and_answers_400_for_bad_ones() -> None:
    @inject
    async def search(
        q: str, limit: int = 10, exact: bool = False, after: uuid.UUID | None = None
    ) -> JSONResponse:
        return JSONResponse({"q": q, "limit": limit, "exact": exact, "after": str(after)})

    @inject
    async def item(id: int, token: CancellationToken) -> JSONResponse:  # a path parameter
        return JSONResponse({"id": id, "token": token.can_be_cancelled})

    app = Starlette(
        routes=[Route("/search", search), Route("/items/{id:int}", item)],
        middleware=[Middleware(RequestAbortedMiddleware)],
    )
    with TestClient(app) as client:
        found = client.get("/search", params={"q": "tea", "limit": "3", "exact": "true"})
        assert found.json() == {"q": "tea", "limit": 3, "exact": True, "after": "None"}
        assert client.get("/items/7").json() == {"id": 7, "token": True}

        missing = client.get("/search")
        assert (missing.status_code, missing.text) == (400, "missing query parameter 'q'")
        malformed = client.get("/search", params={"q": "tea", "limit": "many"})
        assert malformed.status_code == 400
        assert "'limit'" in malformed.text


# -- current_token(): outside a request, or inside one without the middleware --------------------


def test_current_token_outside_a_request_says_exactly_that() -> None:
    with pytest.raises(RuntimeError) as raised:
        contextvars.Context().run(current_token)

    assert str(raised.value).startswith("no request is being handled here")
    assert "not installed" not in str(raised.value)


def test_current_token_in_a_request_without_the_middleware_says_the_middleware_is_missing() -> None:
    errors: list[str] = []

    async def endpoint(request: Request) -> PlainTextResponse:
        try:
            current_token()
        except RuntimeError as exc:
            errors.append(str(exc))
        return PlainTextResponse("ok")

    with TestClient(Starlette(routes=[Route("/", endpoint)])) as client:
        client.get("/")

    assert len(errors) == 1
    assert errors[0].startswith("RequestAbortedMiddleware is not installed")


def test_current_token_in_a_sync_endpoint_without_the_middleware_names_both_causes() -> None:
    errors: list[str] = []

    def endpoint(request: Request) -> PlainTextResponse:
        try:
            current_token()
        except RuntimeError as exc:
            errors.append(str(exc))
        return PlainTextResponse("ok")

    with TestClient(Starlette(routes=[Route("/", endpoint)])) as client:
        client.get("/")

    assert len(errors) == 1
    assert "RequestAbortedMiddleware is not installed" in errors[0]
