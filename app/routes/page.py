"""``GET /``: the search-as-you-type page, its static files, ``/about`` and ``/favicon.ico``.

Plain HTML, CSS and JavaScript from ``app/static/``: no build step and nothing from a CDN. The
page calls ``/search`` on every keystroke, aborting the previous ``fetch`` with an
``AbortController``, and polls ``/stats`` for what the server did about those aborts. Its brand
line links ``/about``, the project's README as plain text, so the page names what it demonstrates
without reaching outside the server; ``/favicon.ico`` is the page's SVG icon, so a browser's
automatic request for it gets an answer instead of a 404 in the log.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from request_aborted import CancellationToken, inject

from .stats import stats

__all__ = ["README", "STATIC_DIR", "page_routes"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
README = Path(__file__).resolve().parents[2] / "README.md"


async def page(request: Request, _token: CancellationToken) -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})


async def about(request: Request, _token: CancellationToken) -> Response:
    if not README.is_file():
        return PlainTextResponse("request-aborted: README.md is not installed here", 404)
    return FileResponse(README, media_type="text/plain; charset=utf-8")


async def favicon(request: Request, _token: CancellationToken) -> FileResponse:
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml",
                        headers={"cache-control": "max-age=86400"})  # fmt: skip


def page_routes() -> list[BaseRoute]:
    """The page, its static files, its ``/stats`` feed, ``/about`` and the favicon."""
    return [
        Route("/", inject(page)),
        Route("/stats", inject(stats)),
        Route("/about", inject(about)),
        Route("/favicon.ico", inject(favicon)),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
