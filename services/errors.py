"""What a service says when it refuses a request: plain exceptions, mapped to HTTP at the edge.

Services know nothing of HTTP. ``app/problems.py`` turns these into problem+json responses with
the right status; cancellation is *not* among them, because it is not an error: it travels up as
``OperationCancelled`` and the middleware ends the request (499 for a client that left).
``DatabaseUnavailable`` is the repositories' word for a database that cannot serve right now; the
services pass it on as it is (it is no refusal of theirs), and the edge answers 503.
"""

from __future__ import annotations

from repositories import DatabaseUnavailable

__all__ = [
    "Conflict",
    "DatabaseUnavailable",
    "InvalidInput",
    "NotFound",
    "PayloadTooLarge",
    "ServiceError",
]


class ServiceError(Exception):
    """Base class: a request the service will not carry out, with a message for the client."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(ServiceError):
    """Raised when the thing asked for does not exist (an unknown report name)."""


class InvalidInput(ServiceError):
    """Raised when the request is well-formed but its values make no sense (422)."""

    def __init__(self, detail: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.errors = errors or []


class Conflict(ServiceError):
    """Raised when the request is valid but the current state forbids it (out of stock)."""


class PayloadTooLarge(ServiceError):
    """Raised when an upload is larger than the configured limit."""
