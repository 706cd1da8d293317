"""Run the upstream inside the demo's process, on its own port, for the one-command start.

It is still a real HTTP server on a real socket - the point is that the demo's outbound call
crosses a connection that can be closed - just owned by the demo's lifespan instead of a second
terminal. Set ``RECOMMENDER_URL`` to use a separately started upstream instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

__all__ = ["EmbeddedServer"]

# Set in the embedded server's task, so its "Started server process" and "Shutting down" lines
# do not read, in the demo's log, like a second demo starting and stopping.
_embedded: contextvars.ContextVar[bool] = contextvars.ContextVar("demo.embedded", default=False)


def _not_embedded_info(record: logging.LogRecord) -> bool:
    return record.levelno > logging.INFO or not _embedded.get()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The host server owns SIGTERM/SIGINT; the demo's lifespan stops this one.
        yield


class EmbeddedServer:
    """A uvicorn server task on 127.0.0.1 and a free port; ``async with`` starts and stops it."""

    def __init__(self, app: ASGIApp) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))  # bound now, so the port cannot be taken in between
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(
            app, lifespan="off", access_log=False, log_config=None, log_level=None
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> EmbeddedServer:
        uvicorn_logger = logging.getLogger("uvicorn.error")
        if _not_embedded_info not in uvicorn_logger.filters:
            uvicorn_logger.addFilter(_not_embedded_info)
        context = contextvars.copy_context()
        context.run(_embedded.set, True)
        serve = self._server.serve(sockets=[self._socket])
        self._task = asyncio.create_task(serve, context=context)
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the embedded upstream stopped during startup")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        task, self._task = self._task, None
        if task is not None:
            await task
        self._socket.close()
