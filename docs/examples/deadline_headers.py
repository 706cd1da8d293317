# uvicorn --app-dir docs/examples deadline_headers:app
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from request_aborted import CancellationToken, RequestAbortedMiddleware, inject


@inject
async def budget(request: Request, token: CancellationToken) -> JSONResponse:
    return JSONResponse({"remaining_seconds": token.remaining()})


app = Starlette(
    routes=[Route("/budget", budget)],
    middleware=[
        Middleware(RequestAbortedMiddleware, timeout=10,
                   deadline_headers=["x-envoy-expected-rq-timeout-ms", "grpc-timeout"])
    ],
)  # fmt: skip
