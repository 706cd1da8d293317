"""The middleware, the token and the lifetime under anyio's trio backend, as under asyncio.

Starlette's and FastAPI's own test suites run every test under trio too, and ``hypercorn -k trio``
serves apps under it. Backend-neutral tests (written with anyio) run on both backends through
anyio's pytest plugin; the ``TestClient(backend="trio")`` tests are how Starlette users test.
The real-server half is ``tests/e2e/test_trio.py``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message, Scope
from starlette.websockets import WebSocket, WebSocketDisconnect

from request_aborted import (
    ApplicationLifetime,
    BackgroundService,
    CancellationToken,
    CancellationTokenSource,
    ClientDisconnected,
    OperationCancelled,
    RequestAbortedMiddleware,
    RequestTimedOut,
    ServerShuttingDown,
    current_token,
    request_aborted,
    request_timeout,
)

BOTH = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


def app_with(*routes: Route, **options: Any) -> Starlette:
    return Starlette(
        routes=list(routes), middleware=[Middleware(RequestAbortedMiddleware, **options)]
    )


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello", headers={"x-kept": "yes"})


async def sleeps_in_scope(request: Request) -> Response:
    async with request_aborted(request).scope():
        await anyio.sleep(30)
    return PlainTextResponse("too late")


# -- TestClient(backend="trio") ------------------------------------------------------------------


def test_a_request_that_completes_is_unchanged_under_trio() -> None:
    async def echo(request: Request) -> Response:
        body = await request.body()
        assert not request_aborted(request).is_cancellation_requested
        return PlainTextResponse(body[::-1])

    app = app_with(Route("/", hello), Route("/echo", echo, methods=["POST"]))
    with TestClient(app, backend="trio") as client:
        response = client.get("/")
        assert (response.status_code, response.text) == (200, "hello")
        assert response.headers["x-kept"] == "yes"
        assert client.post("/echo", content=b"abc" * 1000).text == "cba" * 1000


def test_a_scope_still_awaiting_at_the_request_timeout_answers_504_under_trio() -> None:
    aborted: list[BaseException] = []
    app = app_with(
        Route("/", request_timeout(0.05)(sleeps_in_scope)),
        on_abort=lambda scope, reason, elapsed: aborted.append(reason),
    )
    with TestClient(app, backend="trio") as client:
        response = client.get("/")
    assert response.status_code == 504
    assert response.json()["status"] == 504
    assert len(aborted) == 1 and isinstance(aborted[0], RequestTimedOut)


def test_the_middleware_default_timeout_answers_504_under_trio(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = app_with(Route("/", sleeps_in_scope), timeout=0.05)
    with caplog.at_level(logging.INFO, "request_aborted"), TestClient(app, backend="trio") as c:
        response = c.get("/")
    assert response.status_code == 504
    lines = [r for r in caplog.records if r.name == "request_aborted"]
    assert len(lines) == 1 and "(504)" in lines[0].getMessage()
    assert lines[0].exc_info is None


def test_a_deadline_header_shorter_than_the_work_answers_504_under_trio() -> None:
    app = app_with(Route("/", sleeps_in_scope), deadline_headers=["x-request-timeout-ms"])
    with TestClient(app, backend="trio") as client:
        response = client.get("/", headers={"x-request-timeout-ms": "50"})
    assert response.status_code == 504


def test_a_handler_that_ignores_its_token_is_cancelled_by_enforce_after_under_trio() -> None:
    async def stubborn(request: Request) -> Response:
        await anyio.sleep(30)  # never looks at its token
        return PlainTextResponse("too late")

    app = app_with(Route("/", stubborn), timeout=0.05, enforce_after=0.05)
    with TestClient(app, backend="trio") as client:
        assert client.get("/").status_code == 504


def test_a_sync_endpoint_polling_its_token_times_out_under_trio() -> None:
    def polling(request: Request) -> Response:
        token = request_aborted(request)
        for _ in range(5000):  # 10 s at most
            token.raise_if_cancellation_requested()
            threading.Event().wait(0.002)
        return PlainTextResponse("too late")

    app = app_with(Route("/", polling), timeout=0.05)
    with TestClient(app, backend="trio") as client:
        assert client.get("/").status_code == 504


class Ticker(BackgroundService):
    def __init__(self) -> None:
        self.events: list[str] = []

    async def execute(self, stopping_token: CancellationToken) -> None:
        self.events.append("started")
        try:
            async with stopping_token.scope():
                await anyio.sleep(60)
        except OperationCancelled as cancelled:
            self.events.append(f"stopped: {type(cancelled.reason).__name__}")


def test_the_lifetime_starts_and_stops_with_the_lifespan_under_trio() -> None:
    lifetime = ApplicationLifetime(grace=5, handle_signals=False)
    service = Ticker()
    seen: list[str] = []

    @asynccontextmanager
    async def inner(app: Any) -> AsyncIterator[None]:
        lifetime.add_service(service)
        yield
        seen.append(f"inner exits, stopped={lifetime.stopped.is_cancellation_requested}")

    app = Starlette(
        routes=[Route("/", hello)],
        middleware=[Middleware(RequestAbortedMiddleware)],
        lifespan=lifetime.lifespan(inner),
    )
    with TestClient(app, backend="trio") as client:
        assert lifetime.phase == "started"
        assert lifetime.started.is_cancellation_requested
        assert client.get("/").status_code == 200
    assert lifetime.phase == "stopped"
    assert service.events == ["started", "stopped: ServerShuttingDown"]
    assert seen == ["inner exits, stopped=False"]
    assert isinstance(lifetime.grace_expired.reason, ServerShuttingDown)


class Stubborn(BackgroundService):
    stop_timeout = 0.05

    def __init__(self) -> None:
        self.cancelled = False

    async def execute(self, stopping_token: CancellationToken) -> None:
        try:
            await anyio.sleep(60)  # deaf to its token
        except BaseException:
            self.cancelled = True
            raise


def test_a_service_that_ignores_its_token_is_named_and_cancelled_under_trio(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lifetime = ApplicationLifetime(grace=5, handle_signals=False)
    service = Stubborn()
    lifetime.add_service(service)
    app = Starlette(routes=[Route("/", hello)], lifespan=lifetime.lifespan())
    client = TestClient(app, backend="trio")
    with caplog.at_level(logging.WARNING, "request_aborted.lifetime"), client:
        pass
    assert service.cancelled
    assert any("Stubborn ignored its stopping token" in r.getMessage() for r in caplog.records)
    assert lifetime.phase == "stopped"


def test_a_request_still_running_when_the_grace_period_ends_answers_503_under_trio() -> None:
    lifetime = ApplicationLifetime(grace=0.05, handle_signals=False)

    async def long(request: Request) -> Response:
        lifetime.begin_shutdown()  # as a SIGTERM would, from the request's own run
        return await sleeps_in_scope(request)

    app = Starlette(
        routes=[Route("/", long)],
        middleware=[Middleware(RequestAbortedMiddleware)],
        lifespan=lifetime.lifespan(),
    )
    with TestClient(app, backend="trio") as client:
        response = client.get("/")
    assert response.status_code == 503


# -- both backends, in-process ASGI --------------------------------------------------------------


class Connection:
    """A server's side of one HTTP request, backend-neutral: the body, then a disconnect only
    when the client leaves (as uvicorn and hypercorn answer a receive() after the body)."""

    def __init__(self, body: bytes = b"") -> None:
        self.body = body
        self.left = anyio.Event()
        self.sent: list[Message] = []
        self._body_sent = False

    async def receive(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def serve(
        self, app: ASGIApp, *, leave_after: float | None = None, state: dict[str, Any] | None = None
    ) -> None:
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"test")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        if state is not None:
            scope["state"] = state
        async with anyio.create_task_group() as tg:
            if leave_after is not None:

                async def leave() -> None:
                    await anyio.sleep(leave_after)
                    self.left.set()

                tg.start_soon(leave)
            await app(scope, self.receive, self.send)
            tg.cancel_scope.cancel()

    @property
    def status(self) -> int | None:
        for message in self.sent:
            if message["type"] == "http.response.start":
                return int(message["status"])
        return None


@BOTH
@pytest.mark.anyio
async def test_a_client_that_leaves_fires_the_token_and_logs_one_499_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fired: list[BaseException] = []
    cleaned_up: list[bool] = []

    async def slow(request: Request) -> Response:
        token = request_aborted(request)
        try:
            async with token.scope():
                await anyio.sleep(30)
        finally:
            cleaned_up.append(True)
            fired.append(token.reason)  # type: ignore[arg-type]
        return PlainTextResponse("too late")

    hooked: list[int] = []
    app = RequestAbortedMiddleware(
        Starlette(routes=[Route("/", slow)]),
        on_abort=lambda scope, reason, elapsed: hooked.append(1),
    )
    connection = Connection()
    with caplog.at_level(logging.INFO, "request_aborted"), anyio.fail_after(10):
        await connection.serve(app, leave_after=0.05)
    assert cleaned_up == [True]
    assert len(fired) == 1 and isinstance(fired[0], ClientDisconnected)
    lines = [r for r in caplog.records if r.name == "request_aborted"]
    assert [r.getMessage().endswith("(499)") for r in lines] == [True]
    assert lines[0].exc_info is None
    assert hooked == [1]


@BOTH
@pytest.mark.anyio
async def test_a_watched_request_reads_its_whole_body_through_the_pump() -> None:
    async def upload(request: Request) -> Response:
        token = request_aborted(request)
        assert not token.is_cancellation_requested  # observed: the pump starts watching
        await anyio.sleep(0.02)
        body = await request.body()
        return PlainTextResponse(str(len(body)))

    connection = Connection(b"x" * 100_000)
    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", upload)]), watch_delay=0)
    with anyio.fail_after(10):
        await connection.serve(app)
    assert connection.status == 200
    assert connection.sent[-1]["body"] == b"100000"


@BOTH
@pytest.mark.anyio
async def test_a_request_leaves_no_task_of_its_own_behind(anyio_backend: str) -> None:
    """The pump is owned by the request: cancelled when it ends, under either backend."""

    async def watched(request: Request) -> Response:
        assert not request_aborted(request).is_cancellation_requested
        await anyio.sleep(0.02)  # long enough for the pump to start
        return PlainTextResponse("ok")

    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", watched)]), watch_delay=0)
    await Connection().serve(app)  # warm: a trio run starts its timer task once
    await anyio.sleep(0.01)
    before = _living_tasks(anyio_backend)
    for _ in range(3):
        await Connection().serve(app)
    await anyio.sleep(0.01)  # a cancelled pump finishes at the next turn
    assert _living_tasks(anyio_backend) == before


def _living_tasks(backend: str) -> int:
    if backend == "trio":
        return trio.lowlevel.current_statistics().tasks_living
    import asyncio

    return len(asyncio.all_tasks())


@BOTH
@pytest.mark.anyio
async def test_token_scope_raises_operation_cancelled_when_its_token_fires() -> None:
    source = CancellationTokenSource()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_fire_soon, source)
            with pytest.raises(OperationCancelled) as raised:
                async with source.token.scope() as scope:
                    await anyio.sleep(30)
    assert scope.cancelled_caught
    assert raised.value.reason is source.reason


async def _fire_soon(source: CancellationTokenSource) -> None:
    await anyio.sleep(0.01)
    source.cancel("stop")


@BOTH
@pytest.mark.anyio
async def test_token_scope_lets_an_outer_cancel_scope_cancellation_pass_through() -> None:
    source = CancellationTokenSource()
    with anyio.move_on_after(0.02) as outer:
        async with source.token.scope() as scope:
            await anyio.sleep(30)
    assert outer.cancelled_caught
    assert not scope.cancelled_caught
    assert not source.is_cancellation_requested


@BOTH
@pytest.mark.anyio
async def test_token_scope_refuses_to_start_for_a_token_that_already_fired() -> None:
    source = CancellationTokenSource()
    source.cancel("before")
    ran: list[bool] = []
    with pytest.raises(OperationCancelled):
        async with source.token.scope():
            ran.append(True)
    assert ran == []
    await anyio.lowlevel.checkpoint()  # no stray cancellation is left pending


@BOTH
@pytest.mark.anyio
async def test_a_token_fired_from_another_thread_interrupts_the_scope() -> None:
    source = CancellationTokenSource()
    timer = threading.Timer(0.02, source.cancel, ("from a thread",))
    timer.start()
    try:
        with anyio.fail_after(10), pytest.raises(OperationCancelled):
            async with source.token.scope():
                await anyio.sleep(30)
    finally:
        timer.join()


@BOTH
@pytest.mark.anyio
async def test_token_wait_returns_the_reason_and_cancel_after_fires_on_the_loop() -> None:
    source = CancellationTokenSource(timeout=0.02)
    with anyio.fail_after(10):
        reason = await source.token.wait()
    assert reason is source.reason
    assert source._timer is None  # fired by the loop's timer, not a timer thread


@BOTH
@pytest.mark.anyio
async def test_a_critical_section_holds_the_interruption_until_it_ends() -> None:
    source = CancellationTokenSource()
    steps: list[str] = []
    with anyio.fail_after(10), pytest.raises(OperationCancelled):
        async with source.token.scope():
            async with source.token.critical_section():
                source.cancel("now")
                await anyio.sleep(0.02)
                steps.append("committed")
            steps.append("after the section")
            await anyio.sleep(30)
    assert steps == ["committed", "after the section"]


@BOTH
@pytest.mark.anyio
async def test_current_token_inside_a_request_is_the_requests_own() -> None:
    seen: list[CancellationToken] = []

    async def handler(request: Request) -> Response:
        seen.append(current_token())
        return PlainTextResponse("ok")

    connection = Connection()
    await connection.serve(RequestAbortedMiddleware(Starlette(routes=[Route("/", handler)])))
    assert connection.status == 200
    assert len(seen) == 1 and seen[0].can_be_cancelled


@pytest.fixture
def signals_seen() -> Iterator[list[int]]:
    """Stand in for the server's own SIGTERM handler, so chaining can be observed."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    yield seen
    signal.signal(signal.SIGTERM, previous)


@BOTH
@pytest.mark.anyio
async def test_sigterm_shuts_down_in_two_phases_and_a_request_still_running_answers_503(
    signals_seen: list[int],
) -> None:
    """The lifetime's signal hook hands over to the loop (trio: its run's token) from the signal
    handler; phase 2 after the grace period ends the request in flight as a 503."""
    lifetime = ApplicationLifetime(grace=0.1, handle_signals=True)
    order: list[str] = []
    lifetime.stopping.register(lambda _: order.append("stopping"))
    lifetime.grace_expired.register(lambda _: order.append("grace expired"))
    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", sleeps_in_scope)]))
    connection = Connection()
    with anyio.fail_after(10):
        async with lifetime.lifespan()(None) as state, anyio.create_task_group() as tg:
            tg.start_soon(partial(connection.serve, app, state=dict(state)))
            await anyio.sleep(0.02)
            os.kill(os.getpid(), signal.SIGTERM)
            await lifetime.stopping.wait()
            order.append("request still running" if connection.status is None else "over")
    assert signals_seen == [signal.SIGTERM]  # chained to the server's handler
    assert order == ["stopping", "request still running", "grace expired"]
    assert connection.status == 503
    assert lifetime.phase == "stopped"


# -- the asyncio hot path does not consult trio ------------------------------------------------


def test_the_asyncio_path_never_looks_for_trio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backend detection happens when asyncio finds no loop: never on an asyncio request."""
    from request_aborted import _loop

    def looked(*args: object) -> None:
        raise AssertionError("trio consulted on the asyncio path")

    monkeypatch.setattr(_loop, "_trio_loop", looked)

    async def handler(request: Request) -> Response:
        token = request_aborted(request)
        assert not token.is_cancellation_requested
        async with token.scope(), token.critical_section():
            await anyio.sleep(0.005)
        return PlainTextResponse("ok")

    app = app_with(
        Route("/", handler),
        Route("/slow", sleeps_in_scope),
        timeout=0.05,
        watch_delay=0,
    )
    with TestClient(app) as client:
        assert client.get("/").status_code == 200
        assert client.get("/slow").status_code == 504


# -- the asyncio-only integrations say so under trio ---------------------------------------------


def test_the_httpx_integration_under_trio_says_it_runs_on_asyncio_only() -> None:
    from request_aborted.httpx import TOKEN_EXTENSION, cancellable_client

    async def main() -> None:
        async with cancellable_client() as client:
            await client.get(
                "http://127.0.0.1:9/", extensions={TOKEN_EXTENSION: CancellationTokenSource().token}
            )

    with pytest.raises(RuntimeError, match=r"request_aborted\.httpx runs on asyncio only"):
        trio.run(main)


def test_the_sqlalchemy_integration_under_trio_says_it_runs_on_asyncio_only() -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from request_aborted.sqlalchemy import cancellable

    async def main() -> None:
        engine = create_async_engine("sqlite+aiosqlite://")
        async with cancellable(AsyncSession(engine), CancellationTokenSource().token):
            pass

    with pytest.raises(RuntimeError, match=r"request_aborted\.sqlalchemy runs on asyncio only"):
        trio.run(main)


# -- WebSockets under trio ---------------------------------------------------------------------


async def shout(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        text = await websocket.receive_text()
        await websocket.send_text(text.upper())


def test_a_websocket_the_client_closes_raises_websocket_disconnect_under_trio() -> None:
    seen: list[BaseException | None] = []

    async def endpoint(websocket: WebSocket) -> None:
        try:
            await shout(websocket)
        finally:
            seen.append(request_aborted(websocket).reason)

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    app.add_middleware(RequestAbortedMiddleware)
    client = TestClient(app, backend="trio")
    with pytest.raises(WebSocketDisconnect) as raised, client.websocket_connect("/ws") as websocket:
        websocket.send_text("hi")
        assert websocket.receive_text() == "HI"
        websocket.close(1001)
    assert raised.value.code == 1001
    assert [type(reason) for reason in seen] == [ClientDisconnected]


def test_a_websocket_that_times_out_is_closed_with_1001_under_trio() -> None:
    aborted: list[BaseException] = []
    app = Starlette(routes=[WebSocketRoute("/ws", shout)])
    app.add_middleware(
        RequestAbortedMiddleware,
        timeout=0.05,
        on_abort=lambda scope, reason, elapsed: aborted.append(reason),
    )
    client = TestClient(app, backend="trio")
    with client.websocket_connect("/ws") as websocket, pytest.raises(WebSocketDisconnect) as raised:
        websocket.receive_text()  # the client stays, silent, until the server closes
    assert raised.value.code == 1001
    assert len(aborted) == 1 and isinstance(aborted[0], RequestTimedOut)


def test_a_block_that_ends_before_its_next_checkpoint_is_not_interrupted_under_trio() -> None:
    """The scope was cancelled while the block yielded without a cancellation point, and the
    block then finished: nothing was interrupted, so nothing is raised (as under asyncio)."""
    source = CancellationTokenSource()
    finished: list[bool] = []

    async def main() -> bool:
        async with source.token.scope() as scope:
            source.cancel("now")
            await trio.lowlevel.cancel_shielded_checkpoint()  # the interruption is scheduled
            await trio.lowlevel.cancel_shielded_checkpoint()  # ... and delivered, not raised
            finished.append(True)
        return scope.cancelled_caught

    assert trio.run(main) is False
    assert finished == [True]


def test_a_fastapi_http_middleware_inside_answers_504_on_timeout_under_trio() -> None:
    """Defect 1's stack (``@app.middleware("http")`` inside ours), under trio."""
    from fastapi import FastAPI

    api = FastAPI()

    @api.middleware("http")
    async def passthrough(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        return response

    @api.get("/slow")
    async def slow(request: Request) -> str:
        async with request_aborted(request).scope():
            await anyio.sleep(30)
        return "too late"

    api.add_middleware(RequestAbortedMiddleware, timeout=0.05)
    with TestClient(api, backend="trio") as client:
        response = client.get("/slow")
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
