"""Host lifetime: ``IHostApplicationLifetime`` and a two-phase graceful shutdown for ASGI servers.

uvicorn and hypercorn only send the lifespan ``shutdown`` event after they have drained every
connection, and uvicorn waits for that forever by default. That is too late to tell anybody to
stop. So the lifetime hooks SIGTERM/SIGINT itself, chained in front of the server's own handler
(never replacing it), and shuts down in two phases:

1. At once: ``stopping`` fires; background services are told to stop; requests in flight may
   still finish, and the server stops accepting new connections as usual.
2. After ``grace`` seconds (or at a second signal): ``grace_expired`` fires with
   ``ServerShuttingDown``; every request still running sees its token fire and ends as a 503
   (the middleware's edge), so the server's drain completes *before* its own hard timeout would
   cancel handlers mid-cleanup.

With ``drain_delay``, the signal reaches the server only that many seconds after phase 1 began:
the server keeps accepting requests while a readiness probe (``request_aborted.readiness``)
already answers 503, so a load balancer stops routing to the instance before it stops listening.
Servers that read signals themselves (hypercorn, granian: asyncio's or Rust's own handlers) learn
of the signal at once regardless.

When the server then runs lifespan shutdown, background services get their bounded stop time,
the application's own lifespan exits (engines disposed after the last request ended), and
``stopped`` fires last.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import FrameType
from typing import Any, Final

from ._background import BackgroundService, ServiceRunner
from ._context import LIFETIME_KEY
from ._exceptions import ServerShuttingDown
from ._loop import Handle, Loop, call_in_loop, running_loop
from ._token import CancellationToken, CancellationTokenSource

__all__ = ["LIFETIME_KEY", "ApplicationLifetime", "Lifespan", "lifetime_of"]

logger = logging.getLogger("request_aborted.lifetime")
_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)

Lifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]
_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


class _Phase(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"
    DRAINING = "grace expired"
    STOPPED = "stopped"


class ApplicationLifetime:
    """The application's ``started``, ``stopping`` and ``stopped`` tokens, and its services.

    Wire it with ``Starlette(lifespan=lifetime.lifespan(your_lifespan))`` (FastAPI alike). The
    middleware finds it in the lifespan state and links every request to ``grace_expired``;
    ``inject`` binds parameters annotated ``ApplicationLifetime``.

    ``grace``: seconds the server's drain gets before requests still running are aborted.
    ``drain_delay``: seconds between the first signal (phase 1; readiness answers 503) and
    passing it on to the server, which then stops accepting; phase 2 comes ``drain_delay +
    grace`` after phase 1. Off (0) by default. See docs/deployment.md for choosing both.

    One run at a time, any number of runs in sequence: a lifetime that has stopped starts afresh
    at the next lifespan startup, with new tokens and the services registered before the first
    start (services added by the application's own lifespan are added again by it). So a
    module-level app survives one ``with TestClient(app):`` per test, each a real start and stop,
    as a process that serves it would see it once. A second startup while a run is still going
    (two servers or two clients at once on one lifetime) is refused: the tokens and services of
    the two would be one, and stopping one would stop both.
    """

    def __init__(
        self,
        *,
        grace: float = 30.0,
        stop_timeout: float = 10.0,
        handle_signals: bool = True,
        drain_delay: float = 0.0,
    ) -> None:
        self.grace = grace
        self.drain_delay = drain_delay
        self.stop_timeout = stop_timeout
        self.handle_signals = handle_signals
        self._registered: list[BackgroundService] = []  # before a start: kept for every run
        self._previous: dict[int, _SignalHandler] = {}
        self._phase = _Phase.CREATED
        self._fresh_run()

    def _fresh_run(self) -> None:
        """What one run owns: its four tokens, its services, its loop and runner."""
        self._started = CancellationTokenSource()
        self._stopping = CancellationTokenSource()
        self._grace_expired = CancellationTokenSource()
        self._stopped = CancellationTokenSource()
        self._services: list[BackgroundService] = list(self._registered)
        self._runner: ServiceRunner | None = None
        self._loop: Loop | None = None
        self._drained = False
        self._signalled = False
        self._deferred: Handle | None = None

    @property
    def started(self) -> CancellationToken:
        """Fires once startup completed and background services were started."""
        return self._started.token

    @property
    def stopping(self) -> CancellationToken:
        """Fires at the first shutdown signal (phase 1): stop taking on new long work."""
        return self._stopping.token

    @property
    def grace_expired(self) -> CancellationToken:
        """Fires when the grace period ends (phase 2): every request still running is aborted."""
        return self._grace_expired.token

    @property
    def stopped(self) -> CancellationToken:
        """Fires last, after services stopped and the application's lifespan exited."""
        return self._stopped.token

    @property
    def phase(self) -> str:
        return self._phase.value

    def add_service(self, service: BackgroundService) -> None:
        """Register a background service; it starts after startup and stops at phase 1.

        Services may be added until startup completes, so the application's own lifespan can
        build them from the resources it creates (an engine, a client). Those added while no run
        is going (before the first, or between runs) belong to every later run; those added
        during startup to that run only.
        """
        if self._phase is _Phase.STARTING:
            self._services.append(service)
        elif self._phase in (_Phase.CREATED, _Phase.STOPPED):
            self._registered.append(service)
            self._services.append(service)
        else:
            raise RuntimeError("add background services before the application starts")

    def stop_application(self) -> None:
        """Ask the server to shut down, as a SIGTERM would (.NET's ``StopApplication``)."""
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            self.begin_shutdown()

    def begin_shutdown(self) -> None:
        """Phase 1 now, phase 2 after the grace period; a second call starts phase 2 at once.

        Safe from any thread: the shutdown itself runs on the application's loop.
        """
        loop = self._loop
        if loop is None:
            self._begin_shutdown()
        else:
            call_in_loop(loop, self._begin_shutdown)

    def _begin_shutdown(self) -> None:
        if self._phase in (_Phase.STOPPING, _Phase.DRAINING, _Phase.STOPPED):
            if self._phase is _Phase.STOPPING:
                logger.info("second shutdown request: aborting requests still in flight now")
                self._expire_grace()
            return
        self._phase = _Phase.STOPPING
        logger.info("shutdown requested: stopping background services, %gs grace", self.grace)
        self._stopping.cancel(ServerShuttingDown())
        if self._runner is not None:
            self._runner.signal_stop()
        # The server hears of it drain_delay later; its drain gets the whole grace from then.
        self._grace_expired.cancel_after(self.drain_delay + self.grace, ServerShuttingDown())
        self._grace_expired.register(self._log_grace_expired)

    def lifespan(
        self, inner: Lifespan | None = None
    ) -> Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any]]]:
        """Wrap the application's own lifespan (or none) for ``Starlette(lifespan=...)``."""

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Mapping[str, Any]]:
            async with self._run(app, inner) as state:
                yield state

        return lifespan

    @asynccontextmanager
    async def _run(self, app: Any, inner: Lifespan | None) -> AsyncIterator[dict[str, Any]]:
        if self._phase is _Phase.STOPPED:
            self._fresh_run()
        elif self._phase is not _Phase.CREATED:
            raise RuntimeError(
                f"this ApplicationLifetime is already running an application ({self._phase.value}):"
                " it runs one application at a time, so start the next one (a TestClient, a"
                " server) after this one stopped, or give each its own ApplicationLifetime"
            )
        self._phase = _Phase.STARTING
        self._loop = running_loop()  # asyncio's, or trio's (hypercorn -k trio runs a lifespan)
        self._install_signal_hooks()
        try:
            async with contextlib.AsyncExitStack() as stack:
                state: dict[str, Any] = {}
                if inner is not None:
                    inner_state = await stack.enter_async_context(inner(app))
                    state.update(inner_state or {})
                state[LIFETIME_KEY] = self
                if self._phase is _Phase.STARTING:
                    self._runner = ServiceRunner(
                        self._services, self._stopping.token, self.stop_application
                    )
                    self._runner.start()
                    self._phase = _Phase.STARTED
                    self._started.cancel("application started")
                    logger.info("application started with %d background service(s)",
                                len(self._services))  # fmt: skip
                try:
                    yield state
                finally:
                    await self._stop_services()
            # The application's own lifespan has exited: engines and clients are closed.
        finally:
            self._restore_signal_hooks()
            self._phase = _Phase.STOPPED
            self._grace_expired.close()
            self._stopped.cancel("application stopped")
            logger.info("application stopped")

    async def _stop_services(self) -> None:
        if self._phase not in (_Phase.STOPPING, _Phase.DRAINING):
            self.begin_shutdown()
        # The server has drained: nothing in flight needs the grace period any more.
        self._drained = True
        self._expire_grace()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.stop(self.stop_timeout)

    def _expire_grace(self) -> None:
        self._phase = _Phase.DRAINING
        self._grace_expired.cancel(ServerShuttingDown())

    def _log_grace_expired(self, reason: BaseException) -> None:
        if not self._drained:
            logger.info("grace period over: aborting requests still in flight")

    # -- signals -------------------------------------------------------------------------------

    def _install_signal_hooks(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        for signum in _SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _restore_signal_hooks(self) -> None:
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes: hand over to the loop, then chain (the first
        # signal after drain_delay, so the server keeps accepting while readiness says 503).
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.begin_shutdown)
                if self.drain_delay > 0 and not self._signalled:
                    self._signalled = True
                    loop.call_soon_threadsafe(self._chain_later, signum)
                    return
        self._chain(signum, frame)

    def _chain_later(self, signum: int) -> None:
        loop = self._loop  # this runs on it, asyncio's or trio's
        assert loop is not None
        self._deferred = loop.call_later(self.drain_delay, self._chain, signum, None)

    def _chain(self, signum: int, frame: FrameType | None) -> None:
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            deferred.cancel()  # a second signal passes the first on at once
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            self._restore_signal_hooks()
            signal.raise_signal(signum)

    def __repr__(self) -> str:
        return f"<ApplicationLifetime [{self._phase.value}] grace={self.grace:g}s>"


def lifetime_of(scope: Mapping[str, Any]) -> ApplicationLifetime | None:
    """The ``ApplicationLifetime`` whose lifespan put itself in the request's state, if any."""
    lifetime = scope.get("state", {}).get(LIFETIME_KEY)
    return lifetime if isinstance(lifetime, ApplicationLifetime) else None
