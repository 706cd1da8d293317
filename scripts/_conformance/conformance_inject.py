"""pytest plugin: every Starlette or FastAPI app a test suite builds gets RequestAbortedMiddleware.

Loaded by ``scripts/conformance`` into Starlette's and FastAPI's own test suites with
``-p conformance_inject``. It puts ``Middleware(RequestAbortedMiddleware)`` first in each app's
``user_middleware`` while the app builds its middleware stack: the position README's "Add it to
your app" documents (outermost user middleware, inside Starlette's ``ServerErrorMiddleware``).
The app's own ``user_middleware`` list is left as the test wrote it, so a test that inspects it
sees what it expects; only the built stack differs.

FastAPI overrides ``build_middleware_stack`` without calling Starlette's, so both are wrapped; an
app whose user middleware already holds the middleware (a suite that adds it itself, or a
subclass whose override calls ``super()``) is left alone, never given a second instance.

The plugin also proves the injection happened: it counts the HTTP and WebSocket requests that
reached a Starlette app and the ones that went through the injected middleware, per test, and
writes the totals of this process (one per xdist worker) as JSON into ``$CONFORMANCE_COUNT_DIR``.
Processes the tests start get the same through ``sitecustomize.py`` beside this file.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import Receive, Scope, Send

from request_aborted import RequestAbortedMiddleware

COUNT_DIR_ENV = "CONFORMANCE_COUNT_DIR"


@dataclass
class Counts:
    """What one process saw: apps built, requests that reached apps and went through ours."""

    apps_injected: int = 0  # middleware stacks built with the middleware put in
    apps_already_had_it: int = 0  # stacks whose user middleware held it already
    app_requests: int = 0  # HTTP/WebSocket calls of a Starlette (or FastAPI) app
    middleware_requests: int = 0  # HTTP/WebSocket calls of the injected middleware
    tests: int = 0
    tests_with_requests: int = 0  # tests during which at least one request went through ours
    # Tests in which a request reached an app but not the middleware, and how many did.
    bypassed: dict[str, int] = field(default_factory=dict)


class CountingRequestAbortedMiddleware(RequestAbortedMiddleware):
    """The middleware under test, unchanged but for counting the requests it is called with."""

    counts: Counts = Counts()  # replaced by install() with the process's own counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            self.counts.middleware_requests += 1
        await super().__call__(scope, receive, send)


def _holds_it(user_middleware: list[Middleware]) -> bool:
    return any(
        isinstance(entry.cls, type) and issubclass(entry.cls, RequestAbortedMiddleware)
        for entry in user_middleware
    )


def _wrap_build(original: Callable[[Any], Any], counts: Counts) -> Callable[[Any], Any]:
    def build_middleware_stack(self: Any) -> Any:
        declared = self.user_middleware
        if _holds_it(declared):
            counts.apps_already_had_it += 1
            return original(self)
        counts.apps_injected += 1
        self.user_middleware = [Middleware(CountingRequestAbortedMiddleware), *declared]
        try:
            return original(self)
        finally:
            self.user_middleware = declared

    build_middleware_stack.__wrapped__ = original  # type: ignore[attr-defined]
    return build_middleware_stack


def _classes_that_build() -> list[type]:
    """Starlette and every app class that defines its own stack building (FastAPI)."""
    classes: list[type] = [Starlette]
    module = sys.modules.get("fastapi.applications")
    if module is None:
        try:
            import fastapi.applications as module
        except ImportError:  # the Starlette suite's venv may lack FastAPI
            return classes
    # None while fastapi.applications is still being imported (it imports Starlette first).
    fastapi = getattr(module, "FastAPI", None)
    if fastapi is not None and "build_middleware_stack" in vars(fastapi):
        classes.append(fastapi)
    return classes


Patched = list[tuple[type, str, Any]]


def _install(counts: Counts, patched: Patched) -> None:
    """Patch what ``patched`` does not hold yet: called again, it catches up with FastAPI."""
    classes = _classes_that_build()  # may import FastAPI, whose import may call activate()
    done = {(cls, name) for cls, name, _ in patched}
    CountingRequestAbortedMiddleware.counts = counts
    for cls in classes:
        if (cls, "build_middleware_stack") not in done:
            original = vars(cls)["build_middleware_stack"]
            patched.append((cls, "build_middleware_stack", original))
            cls.build_middleware_stack = _wrap_build(original, counts)  # type: ignore[method-assign]
    if (Starlette, "__call__") in done:
        return
    original_call = vars(Starlette)["__call__"]
    patched.append((Starlette, "__call__", original_call))

    async def __call__(self: Starlette, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            counts.app_requests += 1
        await original_call(self, scope, receive, send)

    Starlette.__call__ = __call__  # type: ignore[method-assign]


@contextlib.contextmanager
def injected(counts: Counts) -> Iterator[Counts]:
    """Inject the middleware into every app built inside the block, counting into ``counts``."""
    patched: Patched = []
    try:
        _install(counts, patched)
        yield counts
    finally:
        for cls, name, original in reversed(patched):
            setattr(cls, name, original)
        CountingRequestAbortedMiddleware.counts = Counts()


_process: tuple[Counts, Patched] | None = None


def activate() -> Counts:
    """Inject for the rest of this process and write its counts when it ends.

    Idempotent; called again once FastAPI is imported, it patches FastAPI too.

    Called by the pytest plugin, and by ``sitecustomize.py`` in the processes a test starts
    (FastAPI's telemetry tests run apps in fresh interpreters) once they import Starlette.
    """
    global _process
    if _process is None:
        _process = (Counts(), [])
        atexit.register(write_counts)
    _install(*_process)
    return _process[0]


def write_counts() -> None:
    """This process's counts into ``$CONFORMANCE_COUNT_DIR/<pid>.json`` (rewritten, cumulative)."""
    directory = os.environ.get(COUNT_DIR_ENV)
    if directory and _process is not None:
        path = Path(directory) / f"{os.getpid()}.json"
        path.write_text(json.dumps(asdict(_process[0])))


class _Plugin:
    def __init__(self) -> None:
        self.counts = activate()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Iterator[None]:
        counts = self.counts
        before, reached = counts.middleware_requests, counts.app_requests
        try:
            return (yield)
        finally:
            counts.tests += 1
            through = counts.middleware_requests - before
            if through:
                counts.tests_with_requests += 1
            if counts.app_requests - reached > through:
                counts.bypassed[item.nodeid] = counts.app_requests - reached - through

    def close(self) -> None:
        write_counts()  # now as well as at exit: an xdist worker may end without running atexit


_PLUGIN_NAME = "conformance-inject-counter"


def pytest_configure(config: pytest.Config) -> None:
    # Under xdist the controller injects too but runs no tests: its file holds zeros.
    config.pluginmanager.register(_Plugin(), _PLUGIN_NAME)


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.pluginmanager.get_plugin(_PLUGIN_NAME)
    if plugin is not None:
        plugin.close()
