# uvicorn --app-dir docs/examples fastapi_app:app
import asyncio

from fastapi import FastAPI

from request_aborted import CancellationToken, RequestAbortedMiddleware, request_timeout
from request_aborted.fastapi import RequestAborted


class ReportService:
    """Stands in for your service layer: report N takes N seconds of "database" time."""

    async def build(self, id: int, token: CancellationToken) -> dict[str, int]:
        async with token.scope():
            await asyncio.sleep(id)
        return {"id": id, "rows": 42}


reports = ReportService()
app = FastAPI()
app.add_middleware(RequestAbortedMiddleware)


@app.get("/reports/{id}")
@request_timeout(5)
async def report(id: int, token: RequestAborted) -> dict[str, int]:
    return await reports.build(id, token)
