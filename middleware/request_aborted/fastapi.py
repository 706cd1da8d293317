"""FastAPI integration: the request's token as an ``Annotated`` dependency.

``async def report(id: int, token: RequestAborted)`` receives the token of the current request,
the way ``SessionDep = Annotated[Session, Depends(get_session)]`` hands out a session in FastAPI's
own documentation. The middleware must still be installed with ``app.add_middleware``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from ._context import request_aborted
from ._token import CancellationToken

__all__ = ["RequestAborted", "request_token"]


def request_token(connection: HTTPConnection) -> CancellationToken:
    """FastAPI dependency returning the request's (or WebSocket's) token."""
    return request_aborted(connection)


RequestAborted = Annotated[CancellationToken, Depends(request_token)]
"""A handler parameter annotated ``RequestAborted`` receives the request's token."""
