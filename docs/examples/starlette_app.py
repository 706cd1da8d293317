# uvicorn --app-dir docs/examples starlette_app:app
import asyncio

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from request_aborted import CancellationToken, RequestAbortedMiddleware, inject, request_aborted


class CatalogueService:
    """Stands in for your service layer: each call takes two seconds of "database" time."""

    async def search(self, q: str, token: CancellationToken) -> list[str]:
        async with token.scope():
            await asyncio.sleep(2)
        return [name for name in ("amber lamp", "amber vase", "oak desk") if q in name]

    async def count(self, token: CancellationToken) -> int:
        async with token.scope():
            await asyncio.sleep(2)
        return 3


service = CatalogueService()


@inject
async def search(request: Request, token: CancellationToken) -> JSONResponse:
    async with token.scope():  # interrupted at the next await if the client leaves
        results = await service.search(request.query_params["q"], token)
    return JSONResponse(results)


async def plain(request: Request) -> JSONResponse:  # without @inject
    token = request_aborted(request)
    return JSONResponse({"products": await service.count(token)})


app = Starlette(
    routes=[Route("/search", search), Route("/count", plain)],
    middleware=[Middleware(RequestAbortedMiddleware, timeout=30)],
)
