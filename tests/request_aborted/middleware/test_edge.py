"""How an aborted request ends (status, log line, hook), and what is not the edge's business."""

from __future__ import annotations

import asyncio
import json
import logging

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Scope

from request_aborted import (
    CancellationTokenSource,
    ClientDisconnected,
    OperationCancelled,
    RequestAbortedMiddleware,
    RequestTimedOut,
    ServerShuttingDown,
    request_aborted,
)
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


def test_edge_timeout_after_start_ends_the_response_cleanly(
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
    assert exchange.completed
    assert exchange.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
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
