"""The injection plugin of scripts/conformance puts the middleware where README says, and counts.

``scripts/conformance`` runs Starlette's and FastAPI's own suites with
``scripts/_conformance/conformance_inject.py``; a regression-free run means something only if
that plugin really put ``RequestAbortedMiddleware`` into every app, in the documented position
(first user middleware: outermost of the app's own, inside ``ServerErrorMiddleware``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from request_aborted import RequestAbortedMiddleware, request_aborted

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "scripts" / "_conformance"


def _load_plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "conformance_inject", PLUGIN_DIR / "conformance_inject.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


plugin = _load_plugin()


@pytest.fixture
def counts() -> Iterator[Any]:
    with plugin.injected(plugin.Counts()) as counts:
        yield counts


def stack_of(app: Starlette) -> list[type]:
    """The classes of the built middleware stack, outermost first, down to the router."""
    layers: list[type] = []
    layer: Any = app.build_middleware_stack()
    while layer is not app.router:
        layers.append(type(layer))
        layer = layer.app
    return layers


async def token_state(request: Request) -> Response:
    # Raises LookupError when no RequestAbortedMiddleware ran for this request.
    token = request_aborted(request)
    return PlainTextResponse("fired" if token.is_cancellation_requested else "live")


async def echo_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


def test_starlette_app_gets_the_middleware_first_of_its_user_middleware(counts: Any) -> None:
    app = Starlette(routes=[Route("/", token_state)], middleware=[Middleware(GZipMiddleware)])

    layers = stack_of(app)

    assert layers[0] is ServerErrorMiddleware
    assert layers[1] is plugin.CountingRequestAbortedMiddleware
    assert issubclass(layers[1], RequestAbortedMiddleware)
    assert layers[2] is GZipMiddleware
    assert [entry.cls for entry in app.user_middleware] == [GZipMiddleware]  # as declared


def test_fastapi_app_with_an_http_middleware_gets_it_outside_that_middleware(counts: Any) -> None:
    app = FastAPI()

    @app.middleware("http")
    async def passthrough(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        return await call_next(request)

    app.add_route("/", token_state)

    layers = stack_of(app)
    ours = layers.index(plugin.CountingRequestAbortedMiddleware)
    assert layers[0] is ServerErrorMiddleware
    assert layers.count(plugin.CountingRequestAbortedMiddleware) == 1
    # FastAPI's user middleware is the @app.middleware("http") function's BaseHTTPMiddleware:
    # ours is right outside it, and everything outside ours is FastAPI's own.
    assert layers[ours + 1].__name__ == "BaseHTTPMiddleware"
    assert all(layer.__module__.startswith(("starlette.", "fastapi.")) for layer in layers[:ours])
    with TestClient(app) as client:
        assert client.get("/").text == "live"
    assert counts.middleware_requests == 1


def test_fastapi_app_without_user_middleware_gets_it_too(counts: Any) -> None:
    app = FastAPI()
    app.add_route("/", token_state)

    assert stack_of(app).count(plugin.CountingRequestAbortedMiddleware) == 1
    with TestClient(app) as client:
        assert client.get("/").text == "live"


def test_an_app_that_already_has_the_middleware_gets_no_second_one(counts: Any) -> None:
    app = FastAPI()
    app.add_middleware(RequestAbortedMiddleware)

    layers = stack_of(app)

    assert RequestAbortedMiddleware in layers
    assert plugin.CountingRequestAbortedMiddleware not in layers
    assert counts.apps_already_had_it == 1


def test_requests_and_websockets_through_the_middleware_are_counted(counts: Any) -> None:
    app = Starlette(routes=[Route("/", token_state), WebSocketRoute("/ws", echo_socket)])

    with TestClient(app) as client:  # the lifespan goes through it too, uncounted
        for _ in range(3):
            assert client.get("/").text == "live"
        with client.websocket_connect("/ws") as websocket:
            websocket.send_text("hi")
            assert websocket.receive_text() == "hi"

    assert counts.middleware_requests == 4
    assert counts.app_requests == 4
    assert counts.apps_injected == 1


def test_leaving_the_block_restores_the_frameworks() -> None:
    with plugin.injected(plugin.Counts()):
        assert plugin.CountingRequestAbortedMiddleware in stack_of(Starlette())
        assert plugin.CountingRequestAbortedMiddleware in stack_of(FastAPI())

    assert plugin.CountingRequestAbortedMiddleware not in stack_of(Starlette())
    assert plugin.CountingRequestAbortedMiddleware not in stack_of(FastAPI())


def test_the_pytest_plugin_writes_per_process_counts(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_suite.py").write_text(
        textwrap.dedent(
            """
            from starlette.applications import Starlette
            from starlette.responses import PlainTextResponse
            from starlette.routing import Route
            from starlette.testclient import TestClient

            async def hello(request):
                return PlainTextResponse("hello")

            def test_makes_three_requests():
                with TestClient(Starlette(routes=[Route("/", hello)])) as client:
                    for _ in range(3):
                        assert client.get("/").text == "hello"

            def test_makes_none():
                assert Starlette() is not None
            """
        )
    )
    counts_dir = tmp_path / "counts"
    counts_dir.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")]),
        "CONFORMANCE_COUNT_DIR": str(counts_dir),
    }

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "conformance_inject", "test_suite.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert run.returncode == 0, run.stdout + run.stderr
    [written] = counts_dir.glob("*.json")
    assert json.loads(written.read_text()) == {
        "apps_injected": 1,
        "apps_already_had_it": 0,
        "app_requests": 3,
        "middleware_requests": 3,
        "tests": 2,
        "tests_with_requests": 1,
        "bypassed": {},
    }


def test_processes_a_test_starts_get_the_middleware_and_count_too(tmp_path: Path) -> None:
    """FastAPI's telemetry tests run apps in fresh interpreters: sitecustomize.py injects there."""
    script = textwrap.dedent(
        """
        import warnings
        from fastapi import FastAPI  # first: it imports Starlette while it is half imported
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from request_aborted import request_aborted

        warnings.simplefilter("ignore")  # TestClient on httpx rather than httpx2
        from starlette.testclient import TestClient

        async def hello(request):
            return PlainTextResponse(type(request_aborted(request)).__name__)

        fastapi_app = FastAPI()
        fastapi_app.add_route("/", hello)
        for app in (Starlette(routes=[Route("/", hello)]), fastapi_app):
            with TestClient(app) as client:
                assert client.get("/").text == "CancellationToken"
        """
    )
    counts_dir = tmp_path / "counts"
    counts_dir.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")]),
        "CONFORMANCE_COUNT_DIR": str(counts_dir),
    }

    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )

    assert run.returncode == 0, run.stdout + run.stderr
    [written] = counts_dir.glob("*.json")
    counts = json.loads(written.read_text())
    assert (counts["apps_injected"], counts["app_requests"], counts["middleware_requests"]) == (
        2,
        2,
        2,
    )
