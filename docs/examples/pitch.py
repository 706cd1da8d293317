# uvicorn --app-dir docs/examples pitch:app
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from request_aborted import CancellationToken, RequestAbortedMiddleware, inject
from request_aborted.sqlalchemy import cancellable, install_cancellation

engine = create_async_engine("sqlite+aiosqlite:///:memory:")  # or postgresql+asyncpg://...
install_cancellation(engine)
Session = async_sessionmaker(engine)
expensive_query = text(  # about five seconds of work for the database
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000000)"
    " SELECT count(*) AS rows, sum(i % 7) AS total FROM n"
)


# Before: the client left a second ago; the database keeps scanning for another four seconds.
async def report_before(request: Request) -> JSONResponse:
    async with Session() as session:
        rows = await session.execute(expensive_query)
    return JSONResponse(dict(rows.mappings().one()))


# After: the token fires on disconnect, the statement is interrupted in the database,
# the handler unwinds with OperationCancelled and the middleware logs one INFO line.
@inject
async def report(request: Request, token: CancellationToken) -> JSONResponse:
    async with Session() as session, cancellable(session, token):
        rows = await session.execute(expensive_query)
    return JSONResponse(dict(rows.mappings().one()))


app = Starlette(
    routes=[Route("/before", report_before), Route("/report", report)],
    middleware=[Middleware(RequestAbortedMiddleware)],
)
