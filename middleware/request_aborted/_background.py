"""Background services: .NET's ``BackgroundService.ExecuteAsync(stoppingToken)`` for ASGI apps.

"Graceful shutdown is boring until a service refuses to stop." Each service runs in a task the
lifetime owns, with its own token linked to ``stopping``. At shutdown the token fires and the
service gets ``stop_timeout`` seconds to return; one that ignores its token is named in a WARNING
and then cancelled, so it cannot hold the process hostage. An unhandled exception is logged with
its traceback and, as in .NET 6 and later, stops the host unless the service opts out.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

from ._exceptions import OperationCancelled
from ._loop import TaskHandle, running_loop, wait_done
from ._token import CancellationToken, CancellationTokenSource

__all__ = ["BackgroundService", "ServiceRunner"]

logger = logging.getLogger("request_aborted.lifetime")


class BackgroundService(ABC):
    """Subclass and implement ``execute``; register with ``lifetime.add_service(service)``.

    * ``stop_timeout``: seconds the service gets once its token fired (``None``: the lifetime's).
    * ``stop_host_on_error``: whether an unhandled exception shuts the application down.
    """

    stop_timeout: ClassVar[float | None] = None
    stop_host_on_error: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return type(self).__name__

    @abstractmethod
    async def execute(self, stopping_token: CancellationToken) -> None:
        """Do the service's work until ``stopping_token`` fires, then return promptly."""


class ServiceRunner:
    """Starts, watches and stops the background services of one application run.

    It knows nothing of the lifetime that owns it: ``stop_host`` is how a failed service asks for
    the application to stop (``ApplicationLifetime.stop_application``).
    """

    def __init__(
        self,
        services: Sequence[BackgroundService],
        stopping: CancellationToken,
        stop_host: Callable[[], None],
    ) -> None:
        self._services = services
        self._stopping = stopping
        self._stop_host = stop_host
        self._runs: list[tuple[BackgroundService, CancellationTokenSource, TaskHandle]] = []

    def start(self) -> None:
        # An asyncio task, or under trio a system task of the run in its own cancel scope.
        loop = running_loop()
        for service in self._services:
            source = CancellationTokenSource.linked(self._stopping)
            task = loop.create_task(self._execute(service, source.token), name=service.name)
            self._runs.append((service, source, task))

    def signal_stop(self) -> None:
        """Phase 1: fire every service's token (they are linked to ``stopping`` already)."""
        for _, source, _ in self._runs:
            source.cancel(self._stopping.reason)

    async def stop(self, default_timeout: float) -> None:
        """Fire the tokens, wait for each service within its stop time, cancel the stubborn."""
        self.signal_stop()
        runs, self._runs = self._runs, []
        for service, source, task in runs:
            timeout = service.stop_timeout if service.stop_timeout is not None else default_timeout
            if not await wait_done(task, timeout):
                logger.warning(
                    "background service %s ignored its stopping token for %gs; cancelling it",
                    service.name,
                    timeout,
                )
                task.cancel()
                await wait_done(task, timeout)
            source.close()

    async def _execute(self, service: BackgroundService, token: CancellationToken) -> None:
        try:
            await service.execute(token)
        except OperationCancelled:  # deliberate: how a service that honours its token stops
            if not token.is_cancellation_requested:
                self._failed(service)
        except Exception:  # deliberate: logged here, and it may stop the host
            if token.is_cancellation_requested:
                logger.warning("background service %s raised while stopping", service.name,
                               exc_info=True)  # fmt: skip
            else:
                self._failed(service)
        else:
            if not token.is_cancellation_requested:
                logger.info("background service %s finished", service.name)

    def _failed(self, service: BackgroundService) -> None:
        logger.exception("background service %s failed", service.name)
        if service.stop_host_on_error:
            logger.info("stopping the application because %s failed", service.name)
            self._stop_host()
