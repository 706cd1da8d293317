"""The one place the library reads ASGI servers' internals: from a request to its connection.

ASGI gives an app no handle on its connection. A client too slow to read is best cut by aborting
the connection (``_rates``), which also ends a ``send()`` blocked in backpressure. Where a server's
own objects lead to the connection's asyncio transport, that is a fast path; every caller has a
fallback that is always correct, only slower to free the connection (cancel the blocked
``send()``, and let the server close the connection when the client reads or leaves).

=========================================  =====================================================
server                                     the connection's transport
=========================================  =====================================================
uvicorn (h11, httptools; asyncio, uvloop),  ``RequestResponseCycle.transport``; the cycle is
also as gunicorn's ``UvicornWorker``        ``send.__self__``, and ``self`` of ``run_asgi``, the
                                            coroutine of the task that runs the request
gunicorn's own ``asgi`` worker              its protocol's ``transport``; the protocol is
                                            ``self`` of the request task's coroutine
daphne                                      no transport; its twisted request (which can
                                            ``loseConnection()``) is bound into the ``send`` it
                                            gives the app, a ``functools.partial``, found as the
                                            request task's ``send`` (``twisted_request``, used to
                                            cut a started response: ``_cut``)
hypercorn, granian                          out of reach: the fallback
=========================================  =====================================================

The request task is where the transport is found when a framework wrapped ``send`` in a closure
before us (Starlette's outermost error middleware does). None of this is promised by the servers:
``tests/e2e/test_server_transports.py`` runs each server of the table and fails when a release
stops matching (or starts to), and ``tests/request_aborted/test_servers.py`` checks uvicorn in
process for every HTTP implementation and event loop installed.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from starlette.types import Send

__all__ = ["Transport", "connection_transport", "request_task", "task_locals", "twisted_request"]


class Transport(Protocol):
    """The part of an asyncio transport (uvloop's too, which do not derive from asyncio's) used."""

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def get_protocol(self) -> object: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


_TRANSPORT_METHODS = ("close", "abort", "get_protocol", "get_extra_info")


def request_task() -> asyncio.Task[object] | None:
    """The asyncio task running now (the request's, when called from it); ``None`` under trio."""
    try:
        return asyncio.current_task()
    except RuntimeError:  # not asyncio: no task, and no asyncio transport to find
        return None


def task_locals(task: asyncio.Task[object] | None) -> Mapping[str, object]:
    """The locals of the outermost coroutine of ``task``: the server's own code (see the table)."""
    frame = None if task is None else getattr(task.get_coro(), "cr_frame", None)
    return {} if frame is None else frame.f_locals


def connection_transport(server_send: Send, task: asyncio.Task[object] | None) -> Transport | None:
    """The asyncio transport of the connection ``task`` serves, where the server lets us find it.

    ``server_send``: the ``send`` the server gave the application (maybe wrapped already);
    ``task``: the task that runs the request. ``None``: not found, take the fallback.
    """
    for owner in (getattr(server_send, "__self__", None), task_locals(task).get("self")):
        transport = getattr(owner, "transport", None)
        if all(callable(getattr(transport, name, None)) for name in _TRANSPORT_METHODS):
            return transport
    return None


def twisted_request(server_send: Send, task: asyncio.Task[object] | None) -> Any:
    """daphne's twisted request under ``task`` (it has ``loseConnection()``), else ``None``.

    daphne calls the app with ``send=functools.partial(server.handle_reply, request)``; the
    ``send`` our middleware gets is often Starlette's wrapper of it, so the app's own is looked at
    too: the outermost coroutine of the request task is the app daphne called.
    """
    for send in (server_send, task_locals(task).get("send")):
        if isinstance(send, functools.partial) and send.args:
            request = send.args[0]
            if callable(getattr(request, "loseConnection", None)):
                return request
    return None
