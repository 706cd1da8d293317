"""``GET /``: the search-as-you-type page, and ``/static/...``, the files it loads.

Plain HTML, CSS and JavaScript from ``app/static/``: no build step and nothing from a CDN. The
page calls ``/search`` on every keystroke, aborting the previous ``fetch`` with an
``AbortController``, and polls ``/stats`` for what the server did about those aborts.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from request_aborted import CancellationToken, inject

from .stats import stats

__all__ = ["STATIC_DIR", "page_routes"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


async def page(request: Request, _token: CancellationToken) -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})


def page_routes() -> list[BaseRoute]:
    """The page, its static files and its ``/stats`` feed."""
    return [
        Route("/", inject(page)),
        Route("/stats", inject(stats)),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
