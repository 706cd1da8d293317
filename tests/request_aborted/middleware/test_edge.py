"""How an aborted request ends (status, log line, hook), and what is not the edge's business."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from request_aborted import (
    CancellationTokenSource,
    ClientDisconnected,
    OperationCancelled,
    RequestAbortedMiddleware,
    RequestTimedOut,
    ServerShuttingDown,
    current_token,
    request_aborted,
)
from request_aborted.fastapi import RequestAborted
from request_aborted.testing import Exchange, Vanish


async def sleepy(request: Request) -> Response:
    async with request_aborted(request).scope():
        await asyncio.sleep(10)
    return PlainTextResponse("never")


def starlette(*routes: Route) -> Starlette:
    return Starlette(routes=list(routes))


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "request_aborted"]


def test_edge_client_disconnected_sends_nothing_and_logs_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="request_aborted")
    app = RequestAbortedMiddleware(starlette(Route("/slow", sleepy)))
    exchange = Exchange(app, path="/slow", vanish=Vanish.in_handler(delay=0.01))
    asyncio.run(exchange.run())  # no exception out of the middleware
    assert exchange.messages == []
    [record] = lines(caplog)
    assert record.levelno == logging.INFO
    assert "GET /slow" in record.getMessage()
    assert "ClientDisconnected" in record.getMessage()
    assert "(499)" in record.getMessage()
    assert record.__dict__["status"] == 499


def test_edge_timeout_before_start_sends_504_problem_json(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = RequestAbortedMiddleware(starlette(Route("/slow", sleepy)), timeout=0.02)
    exchange = asyncio.run(Exchange(app, path="/slow").run())
    assert exchange.status == 504
    assert exchange.headers["content-type"] == "application/problem+json"
    assert "connection" not in exchange.headers
    problem = json.loads(exchange.body)
    assert problem["status"] == 504
    assert problem["title"] == "Gateway Timeout"
    assert "timed out" in problem["detail"]
    assert exchange.headers["content-length"] == str(len(exchange.body))
    assert isinstance(exchange.reason, RequestTimedOut)
    [record] = lines(caplog)
    assert record.levelno == logging.WARNING
    assert "RequestTimedOut" in record.getMessage()


def test_edge_timeout_after_start_leaves_the_response_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def stream(request: Request) -> Response:
        token = request_aborted(request)

        async def chunks() -> object:
            yield b"first"
            async with token.scope():
                await asyncio.sleep(10)
            yield b"never"

        return StreamingResponse(chunks())  # type: ignore[arg-type]

    app = RequestAbortedMiddleware(starlette(Route("/", stream)), timeout=0.03)
    exchange = asyncio.run(Exchange(app).run())
    assert exchange.status == 200
    assert exchange.body == b"first"
    assert not exchange.completed  # no final body message: it would make the cut look whole
    assert exchange.messages[-1] == {"type": "http.response.body", "body": b"first",
                                     "more_body": True}  # fmt: skip
    [record] = lines(caplog)
    assert record.levelno == logging.WARNING


def test_edge_shutdown_token_sends_503_with_connection_close() -> None:
    shutdown = CancellationTokenSource()

    async def slow(request: Request) -> Response:
        asyncio.get_running_loop().call_later(0.01, shutdown.cancel, ServerShuttingDown())
        return await sleepy(request)

    app = RequestAbortedMiddleware(starlette(Route("/", slow)), shutdown=shutdown.token)
    exchange = asyncio.run(Exchange(app).run())
    assert exchange.status == 503
    assert exchange.headers["connection"] == "close"
    assert exchange.headers["content-type"] == "application/problem+json"
    assert json.loads(exchange.body)["title"] == "Service Unavailable"
    assert isinstance(exchange.reason, ServerShuttingDown)
    assert shutdown.registrations == 0  # the request unregistered from the shutdown token


def test_edge_shutdown_with_any_reason_is_reported_as_server_shutting_down() -> None:
    shutdown = CancellationTokenSource()
    shutdown.cancel("stopping")  # already fired: every new request is refused at once
    app = RequestAbortedMiddleware(starlette(Route("/", sleepy)), shutdown=shutdown.token)
    exchange = asyncio.run(Exchange(app).run())
    assert exchange.status == 503
    assert isinstance(exchange.reason, ServerShuttingDown)


def test_edge_app_error_propagates_untouched_as_500() -> None:
    async def broken(request: Request) -> Response:
        raise ValueError("a real bug")

    app = RequestAbortedMiddleware(starlette(Route("/", broken)))
    exchange = Exchange(app)
    with pytest.raises(ValueError, match="a real bug"):
        asyncio.run(exchange.run())
    assert exchange.status == 500
    assert exchange.reason is None


def test_edge_app_error_after_token_fired_still_propagates() -> None:
    async def broken(request: Request) -> Response:
        await request_aborted(request).wait()
        raise ValueError("a bug while cancelled")

    exchange = Exchange(
        RequestAbortedMiddleware(starlette(Route("/", broken))), vanish=Vanish.in_handler()
    )
    with pytest.raises(ValueError, match="a bug while cancelled"):
        asyncio.run(exchange.run())
    assert isinstance(exchange.reason, ClientDisconnected)


def test_edge_error_from_bare_asgi_app_propagates_without_response() -> None:
    async def app(scope: Scope, receive: object, send: object) -> None:
        raise KeyError("boom")

    exchange = Exchange(RequestAbortedMiddleware(app))
    with pytest.raises(KeyError):
        asyncio.run(exchange.run())
    assert exchange.messages == []


def test_edge_exception_group_of_cancellations_is_absorbed() -> None:
    async def fan_out(request: Request) -> Response:
        token = request_aborted(request)

        async def worker() -> None:
            async with token.scope():
                await asyncio.sleep(10)

        async with asyncio.TaskGroup() as group:
            group.create_task(worker())
            group.create_task(worker())
        return PlainTextResponse("never")

    exchange = Exchange(
        RequestAbortedMiddleware(starlette(Route("/", fan_out))), vanish=Vanish.in_handler(0.01)
    )
    asyncio.run(exchange.run())
    assert isinstance(exchange.reason, ClientDisconnected)
    assert exchange.messages == []


def test_edge_anyio_task_group_of_cancellations_is_absorbed() -> None:
    async def fan_out(request: Request) -> Response:
        token = request_aborted(request)

        async def worker() -> None:
            async with token.scope():
                await anyio.sleep(10)

        async with anyio.create_task_group() as group:
            group.start_soon(worker)
            group.start_soon(worker)
        return PlainTextResponse("never")

    app = RequestAbortedMiddleware(starlette(Route("/", fan_out)), timeout=0.02)
    exchange = asyncio.run(Exchange(app).run())
    assert exchange.status == 504


def test_edge_exception_group_with_a_real_bug_propagates() -> None:
    async def fan_out(request: Request) -> Response:
        token = request_aborted(request)

        async def cancelled() -> None:
            async with token.scope():
                await asyncio.sleep(10)

        async def buggy() -> None:
            await token.wait()
            raise ValueError("bug")

        async with asyncio.TaskGroup() as group:
            group.create_task(cancelled())
            group.create_task(buggy())
        return PlainTextResponse("never")

    exchange = Exchange(
        RequestAbortedMiddleware(starlette(Route("/", fan_out))), vanish=Vanish.in_handler(0.01)
    )
    with pytest.raises(BaseExceptionGroup) as caught:
        asyncio.run(exchange.run())
    assert caught.group_contains(ValueError)


@pytest.mark.parametrize("fired_first", [False, True])
def test_edge_outer_task_cancel_propagates_as_cancelled_error(fired_first: bool) -> None:
    started = asyncio.Event()

    async def slow(request: Request) -> Response:
        token = request_aborted(request)
        if fired_first:
            await token.wait()
        started.set()
        await asyncio.sleep(10)
        return PlainTextResponse("never")

    exchange = Exchange(
        RequestAbortedMiddleware(starlette(Route("/", slow))),
        vanish=Vanish.in_handler() if fired_first else None,
    )

    async def main() -> None:
        task = asyncio.create_task(exchange.run())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert exchange.status is None
    assert (exchange.reason is not None) is fired_first


def test_edge_operation_cancelled_without_fired_token_propagates() -> None:
    other = CancellationTokenSource()
    other.cancel("unrelated")

    async def endpoint(request: Request) -> Response:
        other.token.raise_if_cancellation_requested()
        return PlainTextResponse("never")

    exchange = Exchange(RequestAbortedMiddleware(starlette(Route("/", endpoint))))
    with pytest.raises(OperationCancelled):
        asyncio.run(exchange.run())
    assert exchange.reason is None


def test_on_abort_hook_called_once_with_scope_reason_and_elapsed() -> None:
    calls: list[tuple[Scope, BaseException, float]] = []
    app = RequestAbortedMiddleware(
        starlette(Route("/slow", sleepy)), on_abort=lambda *args: calls.append(args)
    )
    exchange = asyncio.run(Exchange(app, path="/slow", vanish=Vanish.in_handler(0.02)).run())
    [(scope, reason, elapsed)] = calls
    assert scope is exchange.scope
    assert reason is exchange.reason
    assert isinstance(reason, ClientDisconnected)
    assert 0.015 <= elapsed < 5


def test_on_abort_hook_not_called_for_requests_that_finish() -> None:
    calls: list[object] = []

    async def fine(request: Request) -> Response:
        assert not request_aborted(request).is_cancellation_requested
        return PlainTextResponse("ok")

    app = RequestAbortedMiddleware(
        starlette(Route("/", fine)), on_abort=lambda *args: calls.append(args)
    )
    exchange = asyncio.run(Exchange(app).run())
    assert exchange.status == 200
    assert calls == []


def test_on_abort_hook_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def hook(scope: Scope, reason: BaseException, elapsed: float) -> None:
        raise RuntimeError("hook broke")

    app = RequestAbortedMiddleware(starlette(Route("/", sleepy)), timeout=0.01, on_abort=hook)
    exchange = asyncio.run(Exchange(app).run())
    assert exchange.status == 504
    errors = [r for r in lines(caplog) if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "hook broke" in str(errors[0].exc_info[1])


def test_edge_failing_token_callback_is_logged_and_request_still_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def endpoint(request: Request) -> Response:
        token = request_aborted(request)
        token.register(lambda reason: 1 / 0)
        async with token.scope():
            await asyncio.sleep(10)
        return PlainTextResponse("never")

    exchange = Exchange(
        RequestAbortedMiddleware(starlette(Route("/", endpoint))), vanish=Vanish.in_handler(0.01)
    )
    asyncio.run(exchange.run())
    assert isinstance(exchange.reason, ClientDisconnected)
    assert any(r.levelno == logging.ERROR for r in lines(caplog))


def test_edge_app_error_with_add_middleware_position_still_500() -> None:
    async def broken(request: Request) -> Response:
        assert not request_aborted(request).is_cancellation_requested
        raise ValueError("a real bug")

    app = Starlette(routes=[Route("/", broken)])
    app.add_middleware(RequestAbortedMiddleware)  # inside Starlette's ServerErrorMiddleware
    exchange = Exchange(app)
    with pytest.raises(ValueError, match="a real bug"):
        asyncio.run(exchange.run())
    assert exchange.status == 500
    assert exchange.reason is None


def test_edge_client_disconnect_with_add_middleware_position_sends_nothing() -> None:
    app = Starlette(routes=[Route("/", sleepy)])
    app.add_middleware(RequestAbortedMiddleware)
    exchange = Exchange(app, vanish=Vanish.in_handler(0.01))
    asyncio.run(exchange.run())
    assert exchange.messages == []
    assert isinstance(exchange.reason, ClientDisconnected)


# -- issue 14: transparent in real stacks ---------------------------------------------------------


def fastapi_with_http_middleware(timeout: float | None = None) -> FastAPI:
    """The README's stack: ``@app.middleware("http")`` first, ours added last, so outside it."""
    app = FastAPI()

    @app.middleware("http")
    async def stamp(request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers["x-stamped"] = "yes"
        return response

    @app.get("/slow")
    async def slow(token: RequestAborted) -> dict[str, str]:
        async with token.scope():
            await asyncio.sleep(10)
        return {"status": "finished"}

    async def quiet(scope: Scope, receive: Receive, send: Send) -> None:
        await current_token().wait()  # a bare ASGI app: once the client left, it just returns

    app.mount("/quiet", quiet)

    app.add_middleware(RequestAbortedMiddleware, timeout=timeout)
    return app


@pytest.mark.parametrize("path", ["/slow", "/quiet/"])
def test_base_http_middleware_inside_client_disconnect_logs_the_499_line(
    caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """BaseHTTPMiddleware reports the app it runs ending without a response as
    RuntimeError("No response returned."): after our token fired, that is our doing."""
    caplog.set_level(logging.INFO)
    exchange = Exchange(fastapi_with_http_middleware(), path=path, vanish=Vanish.in_handler(0.02))
    asyncio.run(exchange.run())  # no exception out of the stack
    assert exchange.messages == []
    assert isinstance(exchange.reason, ClientDisconnected)
    [record] = lines(caplog)
    assert record.getMessage().endswith("ClientDisconnected: client disconnected (499)")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_base_http_middleware_inside_timeout_answers_504() -> None:
    exchange = asyncio.run(Exchange(fastapi_with_http_middleware(0.05), path="/slow").run())
    assert exchange.status == 504
    assert exchange.headers["content-type"] == "application/problem+json"
    assert isinstance(exchange.reason, RequestTimedOut)


def test_base_http_middleware_inside_no_response_is_still_a_bug_while_the_token_is_unfired() -> (
    None
):
    async def forgetful(scope: Scope, receive: Receive, send: Send) -> None:
        pass  # a bug: returns without a response

    async def passthrough(request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await call_next(request)

    app = RequestAbortedMiddleware(BaseHTTPMiddleware(forgetful, dispatch=passthrough))
    with pytest.raises(RuntimeError, match="No response returned"):
        asyncio.run(Exchange(app).run())


def test_fallout_own_oserror_after_token_fired_is_still_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only errors from this request's connection are fallout: a handler's own OSError is a bug,
    whether or not the token fired before it."""

    async def full_disk(request: Request) -> Response:
        await request_aborted(request).wait()
        raise OSError(28, "No space left on device")

    app = RequestAbortedMiddleware(starlette(Route("/", full_disk)), timeout=0.02)
    app_with_errors = ServerErrorMiddleware(app)
    exchange = Exchange(app_with_errors)
    with pytest.raises(OSError, match="No space left"):
        asyncio.run(exchange.run())
    assert exchange.status == 500
    assert isinstance(exchange.reason, RequestTimedOut)
    assert lines(caplog) == []  # no abort line: the bug is the story


def test_fallout_own_oserror_after_client_left_still_propagates() -> None:
    async def full_disk(request: Request) -> Response:
        await request_aborted(request).wait()
        raise ConnectionRefusedError("the cache server is down")  # an OSError, not ours

    exchange = Exchange(
        RequestAbortedMiddleware(starlette(Route("/", full_disk))), vanish=Vanish.in_handler()
    )
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(exchange.run())
    assert isinstance(exchange.reason, ClientDisconnected)


def test_fallout_oserror_from_the_connection_send_is_absorbed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b"row\n"
                await asyncio.sleep(0.001)

        return StreamingResponse(chunks())

    exchange = Exchange(
        RequestAbortedMiddleware(starlette(Route("/", stream))),
        vanish=Vanish.during_response(2),
        spec_version="2.4",  # send() raises OSError once the client left
    )
    asyncio.run(exchange.run())
    assert isinstance(exchange.reason, ClientDisconnected)
    [record] = lines(caplog)
    assert "(499)" in record.getMessage()


class ClosedTransportExchange(Exchange):
    """uvicorn on uvloop: a write on a closed transport raises RuntimeError from send()."""

    error = "unable to perform operation on <TCPTransport closed=True>; the handler is closed"

    async def send(self, message: Message) -> None:
        if self.disconnected_at is not None:
            self.messages.append(message)
            raise RuntimeError(self.error)
        await super().send(message)


def test_pipelined_request_closed_transport_error_fires_the_token_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """uvicorn-httptools never tells a pipelined request its client left: only its send fails."""
    caplog.set_level(logging.INFO)

    async def pause(request: Request) -> Response:
        await asyncio.sleep(0.05)  # does not watch its token: nothing fires it before the send
        return PlainTextResponse("late")

    exchange = ClosedTransportExchange(
        RequestAbortedMiddleware(starlette(Route("/", pause))), vanish=Vanish.in_handler(0.01)
    )
    asyncio.run(exchange.run())
    assert isinstance(exchange.reason, ClientDisconnected)
    [record] = lines(caplog)
    assert record.levelno == logging.INFO
    assert "(499)" in record.getMessage()


def test_pipelined_request_server_protocol_runtime_error_is_still_a_bug() -> None:
    """A RuntimeError from the server's send that is not about a closed transport is the app's
    bug (a malformed response): it fires nothing and propagates."""

    async def too_long(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"too long"})

    class StrictExchange(Exchange):
        async def send(self, message: Message) -> None:
            if message.get("body") == b"too long":
                raise RuntimeError("Response content longer than Content-Length")
            await super().send(message)

    exchange = StrictExchange(RequestAbortedMiddleware(too_long))
    with pytest.raises(RuntimeError, match="longer than Content-Length"):
        asyncio.run(exchange.run())
    assert exchange.reason is None


def test_pipelined_request_closed_transport_error_from_a_handler_is_still_a_bug() -> None:
    """The "closed" wording counts only when it comes out of this request's send."""

    async def own_socket(request: Request) -> Response:
        await request_aborted(request).wait()
        raise RuntimeError("unable to perform operation on <TCPTransport>; the handler is closed")

    exchange = Exchange(
        RequestAbortedMiddleware(starlette(Route("/", own_socket))), vanish=Vanish.in_handler()
    )
    with pytest.raises(RuntimeError, match="handler is closed"):
        asyncio.run(exchange.run())


class TricklingExchange(Exchange):
    """A client that sends its first body piece at once and the next only after 0.5 s."""

    async def receive(self) -> Message:
        if self.received_bytes and self._pending:
            await asyncio.sleep(0.5)
        return await super().receive()


async def unread(request: Request) -> Response:
    return await sleepy(request)  # never reads its body


async def read_all(request: Request) -> Response:
    await request.body()
    return await sleepy(request)


@pytest.mark.parametrize(
    ("endpoint", "method", "trickles", "closes"),
    [
        pytest.param(unread, "POST", True, True, id="trickling-body-unread"),
        pytest.param(read_all, "POST", True, True, id="trickling-body-half-read"),
        pytest.param(unread, "POST", False, False, id="whole-body-arrived"),
        pytest.param(read_all, "POST", False, False, id="whole-body-read"),
        pytest.param(unread, "GET", False, False, id="no-body"),
    ],
)
def test_timeout_with_unread_body_closes_the_connection(
    endpoint: Callable[[Request], Awaitable[Response]], method: str, trickles: bool, closes: bool
) -> None:
    """Kept open, the server would go on reading the rest of the body before the next request:
    a trickling client held its socket for over a minute after its 504."""
    body, headers = (
        ([b"x" * 10, b"y" * 10], [("content-length", "20")]) if method == "POST" else (b"", [])
    )
    routes = [Route("/", endpoint, methods=[method])]
    app = Starlette(routes=routes, middleware=[Middleware(RequestAbortedMiddleware, timeout=0.1)])
    exchange = (TricklingExchange if trickles else Exchange)(
        app, method=method, headers=headers, body=body
    )
    asyncio.run(exchange.run())
    assert exchange.status == 504
    assert (exchange.headers.get("connection") == "close") is closes


def test_timeout_with_unread_body_over_http2_sends_no_connection_header() -> None:
    """HTTP/2 forbids connection-specific headers; the server ends the stream instead."""
    app = RequestAbortedMiddleware(starlette(Route("/", unread, methods=["POST"])), timeout=0.03)
    exchange = TricklingExchange(
        app, method="POST", headers=[("content-length", "20")], body=[b"x"] * 2
    )
    exchange.scope["http_version"] = "2"
    asyncio.run(exchange.run())
    assert exchange.status == 504
    assert "connection" not in exchange.headers


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/items/x\nERROR: forged line", "/items/x\\nERROR: forged line"),
        ("/items/\x1b[31mred", "/items/\\x1b[31mred"),
        ("/items/\u2028sep", "/items/\\u2028sep"),
        ("/items/back\\slash", "/items/back\\\\slash"),
        ("/items/café", "/items/café"),
    ],
)
def test_log_injection_path_control_characters_are_escaped(
    caplog: pytest.LogCaptureFixture, path: str, logged: str
) -> None:
    caplog.set_level(logging.INFO)
    app = RequestAbortedMiddleware(starlette(Route("/items/{name}", sleepy)))
    asyncio.run(Exchange(app, path=path, vanish=Vanish.in_handler(0.01)).run())
    [record] = lines(caplog)
    message = record.getMessage()
    assert message.startswith(f"GET {logged} aborted after ")
    assert message.isprintable()
    assert record.__dict__["path"] == logged
