"""One test (or a few) per item 1-21 of docs/hazards.md, named after it."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import hashlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Literal

import anyio
import pytest
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from request_aborted import (
    CancellationToken,
    ClientDisconnected,
    OperationCancelled,
    RequestAbortedMiddleware,
    RequestTimedOut,
    current_token,
    request_aborted,
)
from request_aborted.testing import Exchange, Phase, Vanish

from ._servers import FailingServer, LateUpload, YieldingServer, chunks_of

App = Callable[[Scope, Receive, Send], Awaitable[None]]


def routes(
    *pairs: tuple[str, Callable[[Request], Awaitable[Response] | Response]], **options: object
) -> RequestAbortedMiddleware:
    app = Starlette(routes=[Route(path, fn, methods=["GET", "POST"]) for path, fn in pairs])
    return RequestAbortedMiddleware(app, **options)  # type: ignore[arg-type]


# 1 -------------------------------------------------------------------------------------------


def test_hazard_01_body_theft_pump_never_drops_a_chunk() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    pieces = chunks_of(data, 10_000, empty_at=4)

    async def endpoint(request: Request) -> Response:
        assert not request_aborted(request).is_cancellation_requested  # the pump starts
        await asyncio.sleep(0.05)
        body = await request.body()
        return PlainTextResponse(hashlib.sha256(body).hexdigest())

    exchange = LateUpload(routes(("/", endpoint)), method="POST", body=pieces)
    asyncio.run(exchange.run())
    assert exchange.body.decode() == hashlib.sha256(data).hexdigest()


def test_hazard_01_body_theft_fastapi_request_only_handler_gets_full_body() -> None:
    api = FastAPI()

    @api.post("/")
    async def upload(request: FastAPIRequest) -> dict[str, int]:
        assert not current_token().is_cancellation_requested
        await asyncio.sleep(0.02)
        return {"size": len(await request.body())}

    exchange = LateUpload(
        RequestAbortedMiddleware(api), method="POST", body=[b"a" * 2_000_000, b"", b"b" * 3]
    )
    asyncio.run(exchange.run())
    assert exchange.body == b'{"size":2000003}'


# 2 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("observe", ["handler", "background"])
def test_hazard_02_end_of_response_disconnect_leaves_background_tasks_alone(observe: str) -> None:
    done: list[object] = []

    async def background(token: CancellationToken) -> None:
        await asyncio.sleep(0.03)  # the server's "done" disconnect arrives meanwhile
        done.append(token.is_cancellation_requested)

    async def endpoint(request: Request) -> Response:
        token = request_aborted(request)
        if observe == "handler":
            assert not token.is_cancellation_requested  # pump runs through the response
        return PlainTextResponse("ok", background=BackgroundTask(background, token))

    exchange = asyncio.run(Exchange(routes(("/", endpoint))).run())
    assert exchange.body == b"ok"
    assert done == [False]
    assert exchange.reason is None
    assert exchange.disconnected_at is None


# 3 -------------------------------------------------------------------------------------------


def test_hazard_03_completion_flips_before_awaiting_server_send() -> None:
    done = asyncio.Event

    class Server:
        def __init__(self) -> None:
            self.closed = done()
            self.calls = 0

        async def receive(self) -> Message:
            self.calls += 1
            if self.calls == 1:
                return {"type": "http.request", "body": b"", "more_body": False}
            await self.closed.wait()
            return {"type": "http.disconnect"}

        async def send(self, message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.closed.set()  # wakes the pending receive() while handling the last message
                for _ in range(5):
                    await asyncio.sleep(0)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        token = current_token()
        assert not token.is_cancellation_requested  # the pump parks in the server's receive
        await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"bye"})
        await asyncio.sleep(0.01)
        assert not token.is_cancellation_requested

    async def main() -> tuple[Server, Scope]:
        server = Server()
        scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        await RequestAbortedMiddleware(app)(scope, server.receive, server.send)
        return server, scope

    server, scope = asyncio.run(main())
    assert server.calls == 2  # the pump did see the disconnect, during the send
    assert scope["request_aborted.token"].reason is None


# 4 -------------------------------------------------------------------------------------------


def trailers_app(vanish_before_trailers: bool) -> tuple[App, list[Exchange]]:
    holder: list[Exchange] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        token = current_token()
        assert not token.is_cancellation_requested
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"data", "more_body": False})
        if vanish_before_trailers:
            holder[0].vanish()
        await asyncio.sleep(0.01)  # the body is out, the trailers are not: not complete yet
        await send({"type": "http.response.trailers", "headers": [(b"x-sum", b"1")]})
        await asyncio.sleep(0.01)

    return app, holder


@pytest.mark.parametrize("vanish_before_trailers", [False, True])
def test_hazard_04_trailers_end_the_response_at_the_last_trailers(
    vanish_before_trailers: bool,
) -> None:
    app, holder = trailers_app(vanish_before_trailers)
    exchange = Exchange(RequestAbortedMiddleware(app))
    holder.append(exchange)
    asyncio.run(exchange.run())
    if vanish_before_trailers:
        assert isinstance(exchange.reason, ClientDisconnected)
    else:
        assert exchange.completed
        assert exchange.disconnects_delivered == 1  # the server's "done" one
        assert exchange.reason is None


@pytest.mark.parametrize("vanish_before_pathsend", [False, True])
def test_hazard_04_pathsend_ends_the_response(vanish_before_pathsend: bool) -> None:
    holder: list[Exchange] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        token = current_token()
        assert not token.is_cancellation_requested
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if vanish_before_pathsend:
            holder[0].vanish()
        await asyncio.sleep(0.01)
        await send({"type": "http.response.pathsend", "path": "/etc/hostname"})
        await asyncio.sleep(0.01)

    exchange = Exchange(RequestAbortedMiddleware(app))
    holder.append(exchange)
    asyncio.run(exchange.run())
    assert (exchange.reason is not None) is vanish_before_pathsend
    assert exchange.messages[-1]["type"] == "http.response.pathsend"


# 5 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("observed", [False, True], ids=["direct", "pump"])
def test_hazard_05_deliver_once_disconnect_reaches_every_reader(observed: bool) -> None:
    got: list[Message] = []
    holder: list[Exchange] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        if observed:
            assert not current_token().is_cancellation_requested
        readers = [asyncio.ensure_future(receive()) for _ in range(2)]
        await asyncio.sleep(0.01)  # both parked before the disconnect
        holder[0].vanish()
        got.extend(await asyncio.gather(*readers))
        got.append(await receive())  # a third, after it

    exchange = Exchange(RequestAbortedMiddleware(app), disconnect="once", timeout=2)
    holder.append(exchange)
    asyncio.run(exchange.run())
    assert [m["type"] for m in got] == ["http.disconnect"] * 3
    assert exchange.disconnects_delivered == 1
    assert isinstance(exchange.reason, ClientDisconnected)


def test_hazard_05_deliver_once_streaming_listener_and_handler_both_learn() -> None:
    async def endpoint(request: Request) -> Response:
        token = request_aborted(request)

        async def chunks() -> object:
            for i in range(10_000):
                yield b"%d" % i
                await asyncio.sleep(0.001)

        await asyncio.sleep(0)
        assert not token.is_cancellation_requested  # pump and listener both read
        return StreamingResponse(chunks())  # type: ignore[arg-type]

    exchange = Exchange(
        routes(("/", endpoint)), vanish=Vanish.during_response(2), disconnect="once", timeout=2
    )
    asyncio.run(exchange.run())
    assert exchange.disconnects_delivered == 1
    assert len(exchange.messages) < 10


# 6 -------------------------------------------------------------------------------------------


def test_hazard_06_no_spinning_after_repeated_disconnect() -> None:
    holder: list[Exchange] = []

    async def endpoint(request: Request) -> Response:
        token = request_aborted(request)
        assert not token.is_cancellation_requested  # the pump reads the (empty) body
        for _ in range(10_000):  # vanish once the watcher has started, however loaded the machine
            if holder[0].receive_calls:
                break
            await asyncio.sleep(0.001)
        holder[0].vanish()
        await token.wait()
        await asyncio.sleep(0.05)  # keep working a while after the client left
        assert await request.body() == b""  # the pump read it ahead of the disconnect
        for _ in range(3):  # the app's own reads are answered from memory
            assert (await request.receive())["type"] == "http.disconnect"
        return PlainTextResponse("late")

    exchange = YieldingServer(routes(("/", endpoint)))
    holder.append(exchange)
    asyncio.run(exchange.run())
    assert exchange.disconnect_mode == "repeat"
    assert exchange.receive_calls == 2  # the body, then one disconnect: then nobody reads
    assert exchange.disconnects_delivered == 1


# 7 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["once", "repeat"])
def test_hazard_07_disconnect_stuck_behind_unread_body_is_seen(
    mode: Literal["once", "repeat"],
) -> None:
    leftovers: list[Message] = []

    async def endpoint(request: Request) -> Response:
        await request_aborted(request).wait()  # never reads the body before the disconnect
        while True:
            message = await request.receive()
            leftovers.append(message)
            if message["type"] == "http.disconnect":
                break
        return PlainTextResponse("late")

    exchange = Exchange(
        routes(("/", endpoint)), method="POST", body=[b"a" * 1000] * 5, disconnect=mode
    )
    exchange.vanish(Phase.HANDLER)  # gone before the app even started: nothing read yet
    asyncio.run(exchange.run())
    assert isinstance(exchange.reason, ClientDisconnected)
    # hypercorn queues the body before the disconnect, and the app still gets it, in order;
    # uvicorn drops unread body once the client left.
    bodies = [m for m in leftovers if m["type"] == "http.request"]
    assert len(bodies) == (5 if mode == "once" else 0)


def test_hazard_07_disconnect_behind_a_full_buffer_waits_for_the_app() -> None:
    # Bounded read-ahead (#16) means a disconnect queued behind more body than max_buffer is seen
    # only once the app reads: documented trade-off.
    fired: list[bool] = []

    async def endpoint(request: Request) -> Response:
        token = request_aborted(request)
        assert not token.is_cancellation_requested
        await asyncio.sleep(0.03)
        fired.append(token.is_cancellation_requested)
        async for _ in request.stream():
            pass
        await asyncio.sleep(0.01)  # still working once the body is read: now it is seen
        fired.append(token.is_cancellation_requested)
        return PlainTextResponse("late")

    exchange = Exchange(
        routes(("/", endpoint), max_buffer=1000),
        method="POST",
        body=[b"x" * 500] * 6,
        vanish=Vanish.in_handler(),
        disconnect="once",
    )
    asyncio.run(exchange.run())
    assert fired == [False, True]
    assert isinstance(exchange.reason, ClientDisconnected)


# 8 -------------------------------------------------------------------------------------------


def test_hazard_08_spec_2_4_send_oserror_fires_token_and_reraises() -> None:
    seen: dict[str, object] = {}
    holder: list[Exchange] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        token = current_token()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        holder[0].vanish()  # the server learns from the socket, not via receive()
        try:
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        except OSError:
            seen["fired_before_app_saw_error"] = token.is_cancellation_requested
            raise

    exchange = Exchange(RequestAbortedMiddleware(app), spec_version="2.4")
    holder.append(exchange)
    asyncio.run(exchange.run())  # the OSError is fallout: absorbed
    assert seen == {"fired_before_app_saw_error": True}
    assert isinstance(exchange.reason, ClientDisconnected)
    assert exchange.receive_calls == 0


def test_hazard_08_oserror_from_send_without_disconnect_still_fires() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    class Broken(Exchange):
        async def send(self, message: Message) -> None:
            raise ConnectionResetError("reset")

    exchange = Broken(RequestAbortedMiddleware(app))
    asyncio.run(exchange.run())
    assert isinstance(exchange.reason, ClientDisconnected)


# 9 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec_version", ["2.0", "2.3", None])
@pytest.mark.parametrize("mode", ["once", "repeat"])
@pytest.mark.parametrize("observed", [False, True], ids=["listener-only", "listener-and-pump"])
def test_hazard_09_rival_readers_with_streaming_response(
    spec_version: str | None, mode: Literal["once", "repeat"], observed: bool
) -> None:
    async def endpoint(request: Request) -> Response:
        token = request_aborted(request)

        async def chunks() -> object:
            for i in range(10_000):
                if observed:
                    token.raise_if_cancellation_requested()
                yield b"%d," % i
                await asyncio.sleep(0.001)

        return StreamingResponse(chunks())  # type: ignore[arg-type]

    exchange = Exchange(
        routes(("/", endpoint)),
        vanish=Vanish.during_response(5),
        spec_version=spec_version,
        disconnect=mode,
        timeout=2,
    )
    asyncio.run(exchange.run())
    assert isinstance(exchange.reason, ClientDisconnected)
    assert exchange.disconnects_delivered == 1
    assert exchange.body == b"0,1,2,3,4,"
    assert len(exchange.messages) < 12


# 10 ------------------------------------------------------------------------------------------


def test_hazard_10_receive_error_surfaces_from_the_apps_next_receive() -> None:
    errors: list[BaseException] = []

    async def endpoint(request: Request) -> Response:
        assert not request_aborted(request).is_cancellation_requested  # the pump meets the error
        await asyncio.sleep(0.05)
        try:
            await request.body()
        except ConnectionResetError as exc:
            errors.append(exc)
            raise
        return PlainTextResponse("never")

    exchange = FailingServer(routes(("/", endpoint)), method="POST", body=[b"a", b"b"])
    with pytest.raises(ConnectionResetError):
        asyncio.run(exchange.run())
    assert errors == [FailingServer.error]


def test_hazard_10_receive_error_reaches_every_parked_reader() -> None:
    results: list[object] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert not current_token().is_cancellation_requested

        async def reader() -> None:
            try:
                await receive()
                await receive()
            except ConnectionResetError as exc:
                results.append(exc)

        await asyncio.gather(reader(), reader())
        results.append(await asyncio.wait_for(asyncio.shield(_raises(receive)), 1))

    exchange = FailingServer(RequestAbortedMiddleware(app), method="POST", body=b"x", timeout=2)
    asyncio.run(exchange.run())
    assert results == [FailingServer.error] * 3


async def _raises(receive: Receive) -> BaseException | None:
    try:
        await receive()
    except BaseException as exc:
        return exc
    return None


def test_hazard_10_apps_own_error_wins_over_a_receive_error() -> None:
    async def endpoint(request: Request) -> Response:
        assert not request_aborted(request).is_cancellation_requested
        await asyncio.sleep(0.05)  # the pump has failed meanwhile
        raise ValueError("the app's own bug")

    exchange = FailingServer(routes(("/", endpoint)), method="POST", body=[b"a", b"b"])
    with pytest.raises(ValueError, match="own bug"):
        asyncio.run(exchange.run())


# 11 ------------------------------------------------------------------------------------------


def test_hazard_11_exception_groups_are_unwrapped_at_the_edge() -> None:
    siblings: list[str] = []

    async def endpoint(request: Request) -> Response:
        token = request_aborted(request)

        async def interrupted() -> None:
            async with token.scope():
                await asyncio.sleep(10)

        async def sibling() -> None:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:  # the group's own plain cancellation still works
                siblings.append("cancelled by the group")
                raise

        async with asyncio.TaskGroup() as group:
            group.create_task(interrupted())
            group.create_task(sibling())
        return PlainTextResponse("never")

    exchange = Exchange(routes(("/", endpoint)), vanish=Vanish.in_handler(0.01))
    asyncio.run(exchange.run())
    assert siblings == ["cancelled by the group"]
    assert isinstance(exchange.reason, ClientDisconnected)
    assert not issubclass(OperationCancelled, asyncio.CancelledError)


def test_hazard_11_nested_groups_of_fallout_are_absorbed_with_anyio() -> None:
    async def endpoint(request: Request) -> Response:
        token = request_aborted(request)

        async def inner() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(token.wait)
                async with token.scope():
                    await anyio.sleep(10)

        async with anyio.create_task_group() as group:
            group.start_soon(inner)
            group.start_soon(inner)
        return PlainTextResponse("never")

    app = routes(("/", endpoint), timeout=0.02)
    assert asyncio.run(Exchange(app).run()).status == 504


# 12 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("enforce", [False, True])
def test_hazard_12_cleanup_awaits_run_after_the_interruption(enforce: bool) -> None:
    cleanup: list[str] = []

    async def endpoint(request: Request) -> Response:
        try:
            if enforce:
                await asyncio.sleep(10)  # ignores the token: enforce_after cancels it
            else:
                async with request_aborted(request).scope():
                    await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.01)  # not cancelled a second time
            cleanup.append("rolled back")
        return PlainTextResponse("never")

    app = routes(("/", endpoint), timeout=0.01, enforce_after=0.01 if enforce else None)
    exchange = asyncio.run(Exchange(app).run())
    assert cleanup == ["rolled back"]
    assert exchange.status == 504


# 14 ------------------------------------------------------------------------------------------


def test_hazard_14_contextvars_flow_down_and_are_reset_afterwards() -> None:
    user_var: contextvars.ContextVar[str] = contextvars.ContextVar("user")
    seen: dict[str, CancellationToken] = {}

    class Below(BaseHTTPMiddleware):  # runs the app in a child task
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            seen["base_http"] = current_token()
            return await call_next(request)

    async def endpoint(request: Request) -> Response:
        seen["handler"] = current_token()
        user_var.set("set below")

        async def chunks() -> object:
            seen["stream"] = current_token()
            yield b"x"

        return StreamingResponse(
            chunks(),  # type: ignore[arg-type]
            background=BackgroundTask(lambda: seen.setdefault("background", current_token())),
        )

    app = RequestAbortedMiddleware(Below(Starlette(routes=[Route("/", endpoint)])))

    async def main() -> Exchange:
        exchange = await Exchange(app).run()
        with pytest.raises(RuntimeError):
            current_token()  # reset once the request is over
        assert user_var.get("unset") == "unset"
        return exchange

    exchange = asyncio.run(main())
    assert seen == dict.fromkeys(["base_http", "handler", "stream", "background"], exchange.token)


# 15 ------------------------------------------------------------------------------------------


def test_hazard_15_websocket_token_is_never_pumped_with_the_wrong_type() -> None:
    calls: list[Message] = []
    states: list[bool] = []

    async def ws(websocket: WebSocket) -> None:
        token = request_aborted(websocket)
        await websocket.accept()
        for _ in range(5):
            states.append(token.is_cancellation_requested)  # no pump for websockets
            await asyncio.sleep(0.002)
        await websocket.receive()  # the app's own read sees websocket.disconnect
        states.append(token.is_cancellation_requested)

    async def receive() -> Message:
        message: Message = (
            {"type": "websocket.connect"} if not calls else {"type": "websocket.disconnect"}
        )
        calls.append(message)
        return message

    async def send(message: Message) -> None:
        pass

    app = RequestAbortedMiddleware(Starlette(routes=[WebSocketRoute("/", ws)]))
    scope: Scope = {"type": "websocket", "path": "/", "headers": [], "query_string": b""}
    asyncio.run(app(scope, receive, send))
    assert len(calls) == 2
    assert states == [False] * 5 + [True]


# 16 ------------------------------------------------------------------------------------------


# All 25 chunks and a read parked for more; or max_buffer's worth and no read outstanding.
@pytest.mark.parametrize(("max_buffer", "read_ahead"), [(1 << 20, 26), (1000, 10)])
def test_hazard_16_backpressure_drains_the_server_queue_but_bounds_memory(
    max_buffer: int, read_ahead: int
) -> None:
    counts: list[int] = []
    holder: list[Exchange] = []
    pieces = [bytes([65 + i]) * 100 for i in range(25)]

    async def endpoint(request: Request) -> Response:
        assert not request_aborted(request).is_cancellation_requested
        await asyncio.sleep(0.05)  # does not read: the pump reads ahead, up to max_buffer
        counts.append(holder[0].receive_calls)
        return Response(await request.body())

    exchange = Exchange(
        routes(("/", endpoint), max_buffer=max_buffer), method="POST", body=pieces, timeout=2
    )
    holder.append(exchange)
    asyncio.run(exchange.run())
    assert counts == [read_ahead]
    assert exchange.body == b"".join(pieces)


# 17 ------------------------------------------------------------------------------------------


def test_hazard_17_double_install_passes_through() -> None:
    receives: list[Receive] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        receives.append(receive)
        await current_token().wait()

    inner = RequestAbortedMiddleware(app, timeout=0.01)
    exchange = Exchange(RequestAbortedMiddleware(inner), vanish=Vanish.in_handler(0.03))
    asyncio.run(exchange.run())
    assert isinstance(exchange.reason, ClientDisconnected)  # the inner timeout never ran
    assert receives[0].__self__ is exchange.token._source  # type: ignore[attr-defined]


class Passthrough(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await call_next(request)


async def echo(request: Request) -> Response:
    assert not request_aborted(request).is_cancellation_requested
    return Response(await request.body())


async def wait_then_answer(request: Request) -> Response:
    await request_aborted(request).wait()
    return PlainTextResponse("late")


@pytest.mark.parametrize("position", ["above", "below"])
def test_hazard_17_base_http_middleware_above_or_below(position: str) -> None:
    def build(endpoint: Callable[[Request], Awaitable[Response]]) -> App:
        inner = Starlette(routes=[Route("/", endpoint, methods=["GET", "POST"])])
        if position == "above":
            return Passthrough(RequestAbortedMiddleware(inner))
        return RequestAbortedMiddleware(Passthrough(inner))

    body = [b"a" * 70_000, b"", b"b" * 5]
    exchange = Exchange(build(echo), method="POST", body=body)
    asyncio.run(exchange.run())
    assert exchange.body == b"".join(body)
    aborted = Exchange(build(wait_then_answer), vanish=Vanish.in_handler(0.01))
    asyncio.run(aborted.run())
    assert isinstance(aborted.reason, ClientDisconnected)


# 18 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["once", "repeat"])
@pytest.mark.parametrize("observed", [False, True])
def test_hazard_18_is_disconnected_agrees_with_the_token(
    mode: Literal["once", "repeat"], observed: bool
) -> None:
    polls: list[tuple[bool, bool]] = []

    async def endpoint(request: Request) -> Response:
        token = request_aborted(request)
        body = await request.body()
        if observed:
            assert not token.is_cancellation_requested
        for _ in range(200):
            gone = await request.is_disconnected()
            polls.append((gone, token.is_cancellation_requested))
            if gone:
                break
            await asyncio.sleep(0.002)
        assert await request.is_disconnected()  # remembered, however often asked
        return PlainTextResponse(body)

    exchange = Exchange(
        routes(("/", endpoint)),
        method="POST",
        body=[b"a", b"b"],
        vanish=Vanish.in_handler(0.01),
        disconnect=mode,
        timeout=2,
    )
    asyncio.run(exchange.run())
    assert polls[-1] == (True, True)
    assert all(fired for gone, fired in polls if gone)  # the token never lags behind
    assert exchange.disconnects_delivered == 1


# 19 ------------------------------------------------------------------------------------------


def test_hazard_19_exception_handlers_see_the_token() -> None:
    seen: list[CancellationToken] = []

    async def broken(request: Request) -> Response:
        raise KeyError("missing")

    async def handle(request: Request, exc: Exception) -> Response:
        seen.extend([request_aborted(request), current_token()])
        return JSONResponse({"error": "missing"}, status_code=404)

    async def handle_500(request: Request, exc: Exception) -> Response:
        seen.extend([request_aborted(request), current_token()])
        return PlainTextResponse("oops", status_code=500)

    app = Starlette(
        routes=[Route("/missing", broken), Route("/boom", _boom)],
        exception_handlers={KeyError: handle, Exception: handle_500},
    )
    wrapped = RequestAbortedMiddleware(app)
    missing = asyncio.run(Exchange(wrapped, path="/missing").run())
    assert missing.status == 404
    boom = Exchange(wrapped, path="/boom")
    with pytest.raises(ZeroDivisionError):
        asyncio.run(boom.run())
    assert boom.status == 500
    assert seen == [missing.token, missing.token, boom.token, boom.token]


async def _boom(request: Request) -> Response:
    raise ZeroDivisionError


def test_hazard_19_hook_runs_once_even_when_several_causes_fire() -> None:
    calls: list[BaseException] = []

    async def endpoint(request: Request) -> Response:
        async with request_aborted(request).scope():
            await asyncio.sleep(10)
        return PlainTextResponse("never")

    app = routes(("/", endpoint), timeout=0.02, on_abort=lambda s, r, e: calls.append(r))
    exchange = Exchange(app, vanish=Vanish.in_handler(0.025))
    asyncio.run(exchange.run())
    assert len(calls) == 1
    assert isinstance(calls[0], RequestTimedOut)  # the first reason wins


# 20 ------------------------------------------------------------------------------------------


async def _crash(request: Request) -> Response:
    assert not request_aborted(request).is_cancellation_requested
    await asyncio.sleep(0.01)
    raise ValueError("bug")


async def _ok(request: Request) -> Response:
    assert not request_aborted(request).is_cancellation_requested
    await asyncio.sleep(0.01)
    return PlainTextResponse("ok")


async def _hang(request: Request) -> Response:
    assert not request_aborted(request).is_cancellation_requested
    await asyncio.sleep(10)
    return PlainTextResponse("never")


CASES = {
    "success": (_ok, None),
    "app-error": (_crash, ValueError),
    "disconnect": (wait_then_answer, None),
    "outer-cancel": (_hang, asyncio.CancelledError),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hazard_20_no_task_outlives_the_request(case: str) -> None:
    endpoint, expected = CASES[case]
    app = routes(("/", endpoint), watch_delay=0)  # watch at once: there is a pump to clean up

    async def main() -> None:
        before = asyncio.all_tasks()
        vanish = Vanish.in_handler(0.01) if case == "disconnect" else None
        exchange = Exchange(app, method="POST", body=[b"a"] * 3, vanish=vanish)
        task = asyncio.create_task(exchange.run())
        await asyncio.sleep(0.005)
        assert len(asyncio.all_tasks()) == len(before) + 2  # the request and its pump
        if case == "outer-cancel":
            task.cancel()
        try:
            await task
        except BaseException as exc:  # compared with the expected outcome below
            assert expected is not None and isinstance(exc, expected)
        else:
            assert expected is None
        await asyncio.sleep(0)
        assert asyncio.all_tasks() == before

    asyncio.run(main())


def test_hazard_20_token_observed_after_the_request_starts_no_pump() -> None:
    later: list[asyncio.Task[bool]] = []

    async def endpoint(request: Request) -> Response:
        token = request_aborted(request)

        async def look_later() -> bool:
            await asyncio.sleep(0.02)
            return token.is_cancellation_requested  # after the request ended

        later.append(asyncio.create_task(look_later()))
        raise ValueError("no response at all")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await Starlette(routes=[Route("/", endpoint)]).router(scope, receive, send)

    async def main() -> Exchange:
        exchange = Exchange(RequestAbortedMiddleware(app))
        with pytest.raises(ValueError):
            await exchange.run()
        before = asyncio.all_tasks() - set(later)
        assert await later[0] is False
        await asyncio.sleep(0)
        assert asyncio.all_tasks() - set(later) == before
        return exchange

    exchange = asyncio.run(main())
    assert exchange.receive_calls == 0


# 21 ------------------------------------------------------------------------------------------


def test_hazard_21_sync_handler_registers_and_checks_from_the_threadpool() -> None:
    seen: dict[str, object] = {}

    def blocking(request: Request) -> Response:
        token = current_token()  # first look at the token happens in the worker thread
        fired = threading.Event()
        with token.register(lambda reason: fired.set()):
            seen["fired"] = fired.wait(5)
        seen["loop_thread"] = seen["main"] != threading.get_ident()
        token.raise_if_cancellation_requested()
        return PlainTextResponse("never")

    seen["main"] = threading.get_ident()
    exchange = Exchange(routes(("/", blocking)), vanish=Vanish.in_handler(0.02))
    asyncio.run(exchange.run())
    assert seen["fired"] is True
    assert seen["loop_thread"] is True
    assert isinstance(exchange.reason, ClientDisconnected)
    assert exchange.disconnected_at is Phase.HANDLER


def test_hazard_21_sync_handler_timeout_decorator_from_the_threadpool(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from request_aborted import request_timeout

    @request_timeout(0.02)
    def blocking(request: Request) -> Response:
        token = current_token()
        while not token.is_cancellation_requested:
            threading.Event().wait(0.002)
        token.raise_if_cancellation_requested()
        return PlainTextResponse("never")

    exchange = asyncio.run(Exchange(routes(("/", blocking))).run())
    assert exchange.status == 504
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_hazard_20_level_triggered_outer_cancel_propagates_without_leaks() -> None:
    # hypercorn runs the app in an anyio task group and cancels it: every await is cancelled again,
    # including the handler's cleanup and the middleware's own teardown.
    async def hang(request: Request) -> Response:
        assert not request_aborted(request).is_cancellation_requested  # a pump to clean up
        try:
            await anyio.sleep(10)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.005)
        return PlainTextResponse("never")

    async def main() -> None:
        before = asyncio.all_tasks()
        exchange = Exchange(routes(("/", hang)), method="POST", body=[b"a"] * 3)
        with anyio.move_on_after(0.02) as scope:
            await exchange.run()
        assert scope.cancelled_caught
        await asyncio.sleep(0)
        assert asyncio.all_tasks() == before
        assert exchange.reason is None

    anyio.run(main)


@pytest.mark.parametrize("max_buffer", [0, 1])
def test_hazard_16_tiny_max_buffer_still_reads_one_message_ahead(max_buffer: int) -> None:
    async def endpoint(request: Request) -> Response:
        assert not request_aborted(request).is_cancellation_requested
        await asyncio.sleep(0.01)
        return Response(await request.body())

    exchange = Exchange(
        routes(("/", endpoint), max_buffer=max_buffer),
        method="POST",
        body=[b"ab", b"", b"cd"],
        timeout=2,
    )
    asyncio.run(exchange.run())
    assert exchange.body == b"abcd"


def test_hazard_20_a_request_leaves_no_reference_cycles_for_the_gc() -> None:
    """Cyclic garbage is freed only by the collector: per request, it shows up as latency."""

    async def observed(request: Request) -> Response:
        async with request_aborted(request).scope():
            await asyncio.sleep(0)
        return PlainTextResponse("ok")

    app = routes(("/", observed))

    async def main() -> int:
        for _ in range(5):  # warm caches that are created once
            await Exchange(app).run()
        gc.collect()
        gc.disable()
        try:
            for _ in range(50):
                await Exchange(app).run()
            return gc.collect()
        finally:
            gc.enable()

    garbage = asyncio.run(main())
    assert garbage < 50  # the harness's own; the middleware's would add ~10 per request
