"""ASP.NET Core's ``HttpContext.RequestAborted`` for ASGI: one cancellation token per request.

The token fires when the client goes away, when the request overruns its time budget, or when the
server shuts down; code that takes the token stops its database queries and outbound calls with it.
"""

from __future__ import annotations

from ._background import BackgroundService as BackgroundService
from ._binding import inject as inject
from ._context import current_token as current_token
from ._context import request_aborted as request_aborted
from ._deadline import DEFAULT_DEADLINE_HEADER as DEFAULT_DEADLINE_HEADER
from ._deadline import DeadlineHeader as DeadlineHeader
from ._exceptions import CancellationReason as CancellationReason
from ._exceptions import CancellationRequested as CancellationRequested
from ._exceptions import ClientDisconnected as ClientDisconnected
from ._exceptions import ClientTooSlow as ClientTooSlow
from ._exceptions import DeadlineExceeded as DeadlineExceeded
from ._exceptions import OperationCancelled as OperationCancelled
from ._exceptions import RequestTimedOut as RequestTimedOut
from ._exceptions import ServerShuttingDown as ServerShuttingDown
from ._lifetime import ApplicationLifetime as ApplicationLifetime
from ._middleware import AbortHook as AbortHook
from ._middleware import RequestAbortedMiddleware as RequestAbortedMiddleware
from ._rates import MinDataRate as MinDataRate
from ._scope import CriticalSection as CriticalSection
from ._scope import TokenScope as TokenScope
from ._timeouts import TimeoutPolicy as TimeoutPolicy
from ._timeouts import request_timeout as request_timeout
from ._token import CancellationToken as CancellationToken
from ._token import CancellationTokenSource as CancellationTokenSource
from ._token import Registration as Registration
from .readiness import Readiness as Readiness

__version__ = "0.1.0"  # Semantic Versioning; the package's only copy of the number (CHANGELOG.md)

__all__ = [
    "DEFAULT_DEADLINE_HEADER",
    "AbortHook",
    "ApplicationLifetime",
    "BackgroundService",
    "CancellationReason",
    "CancellationRequested",
    "CancellationToken",
    "CancellationTokenSource",
    "ClientDisconnected",
    "ClientTooSlow",
    "CriticalSection",
    "DeadlineExceeded",
    "DeadlineHeader",
    "MinDataRate",
    "OperationCancelled",
    "Readiness",
    "Registration",
    "RequestAbortedMiddleware",
    "RequestTimedOut",
    "ServerShuttingDown",
    "TimeoutPolicy",
    "TokenScope",
    "current_token",
    "inject",
    "request_aborted",
    "request_timeout",
]
