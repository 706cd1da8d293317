"""OpenTelemetry for aborted requests (extra ``[opentelemetry]``): mark the request's server span.

``OpenTelemetryAbortHook`` is an ``on_abort`` hook for ``RequestAbortedMiddleware``, paired with
``opentelemetry-instrumentation-asgi`` (or ``-fastapi``, which uses the same middleware). The
instrumentation records the status of what the app *sent*; for a client that left nothing was
sent, so its span says nothing happened. The hook annotates the server span that is current
while it runs:

* ``http.response.status_code``: the status the client was given: 499 for a client that left
  (nginx's convention, as in the abort log line), the edge's 504/503 for a timeout or shutdown;
  a response whose headers were already out keeps the status it was sent with. The legacy
  ``http.status_code`` too, unless ``OTEL_SEMCONV_STABILITY_OPT_IN=http`` asks for the new
  names only (the instrumentation's own switch).
* span status ``ERROR`` for timeouts and shutdowns (the server failed to answer), left alone
  for a client that left (a 4xx on a server span is not the server's error). When the
  instrumentation then records the 504/503 going out, it sets ``ERROR`` again without a
  description; the reason's text is in the event.
* an event named after the reason (``ClientDisconnected``, ``RequestTimedOut``,
  ``ServerShuttingDown``...) with ``request_aborted.stop_seconds``: the time from the token firing
  to the handler's exit, near zero when the code below the handler honours the token; also
  ``request_aborted.reason`` (its text), ``request_aborted.elapsed_seconds`` (since the request
  began), ``http.response.status_code`` (as logged) and ``request_aborted.response_started``.

The instrumentation's middleware must be *outside* ours, so its span is still open when the hook
runs: ``OpenTelemetryMiddleware(app)`` around the Starlette app, or ``FastAPIInstrumentor``
(docs/opentelemetry.md).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Final

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from ._exceptions import ClientDisconnected, describe
from ._request import FIRED_AT_KEY, STARTED_KEY, STATUS_KEY  # set before on_abort runs

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue
    from starlette.types import Scope

__all__ = ["OpenTelemetryAbortHook"]

STATUS: Final = "http.response.status_code"
LEGACY_STATUS: Final = "http.status_code"
REASON: Final = "request_aborted.reason"
STOP_SECONDS: Final = "request_aborted.stop_seconds"
ELAPSED_SECONDS: Final = "request_aborted.elapsed_seconds"
RESPONSE_STARTED: Final = "request_aborted.response_started"


class OpenTelemetryAbortHook:
    """Pass as ``RequestAbortedMiddleware(on_abort=OpenTelemetryAbortHook())``.

    ``legacy_attributes``: also set ``http.status_code``; by default, as the instrumentation does
    (unless ``OTEL_SEMCONV_STABILITY_OPT_IN`` lists ``http`` without ``http/dup``).
    """

    def __init__(self, *, legacy_attributes: bool | None = None) -> None:
        self.legacy_attributes = (
            _instrumentation_reports_legacy() if legacy_attributes is None else legacy_attributes
        )

    def __call__(self, scope: Scope, reason: BaseException, elapsed: float) -> None:
        span = trace.get_current_span()
        if not span.is_recording():
            return  # no span, or the instrumentation's middleware is inside ours
        attributes: dict[str, AttributeValue] = {
            REASON: str(reason),
            ELAPSED_SECONDS: elapsed,
        }
        fired_at = scope.get(FIRED_AT_KEY)
        if fired_at is not None:
            attributes[STOP_SECONDS] = max(0.0, time.monotonic() - fired_at)
        client_left = isinstance(reason, ClientDisconnected)
        status = scope.get(STATUS_KEY)
        if scope["type"] == "http" and isinstance(status, int):
            started = bool(scope.get(STARTED_KEY, False))
            attributes[STATUS] = status
            attributes[RESPONSE_STARTED] = started
            if client_left or not started:  # else the status that was sent stands
                span.set_attribute(STATUS, status)
                if self.legacy_attributes:
                    span.set_attribute(LEGACY_STATUS, status)
        if not client_left:
            span.set_status(Status(StatusCode.ERROR, describe(reason)))
        span.add_event(type(reason).__name__, attributes)


def _instrumentation_reports_legacy() -> bool:
    opt_in = {
        part.strip() for part in os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")
    }
    return "http" not in opt_in or "http/dup" in opt_in
