"""A callback registered on a token source, and the handle that unregisters it.

The bottom of the token's modules: ``_token`` (sources and tokens) and ``_scope`` (blocks bound to
a token) build on it, and it imports neither. What a registration needs of its source is the
``Registry`` protocol below, part of the protected surface ``CancellationTokenSource`` documents.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self

__all__ = ["Callback", "Registration", "Registry"]

Callback = Callable[[BaseException], object]


class Registry(Protocol):
    """What a registration asks of the source it is registered on."""

    def _add(self, registration: Registration) -> BaseException | None: ...

    def _remove(self, registration: Registration) -> bool: ...


class Registration:
    """A callback registered on a token; unregister it when the work it guards is over.

    Unregistering matters for long-lived tokens: a registration that is never removed keeps its
    callback, and everything the callback refers to, alive for as long as the source lives.

    Protected, for the source and for subclasses (``TokenScope``): ``_source``, the source while
    registered (``None`` once fired or unregistered), and ``_fire(reason)``, which the source
    calls when it fires.
    """

    __slots__ = ("_callback", "_source")

    def __init__(self, source: Registry | None, callback: Callback | None) -> None:
        self._source = source
        self._callback = callback

    def _fire(self, reason: BaseException) -> None:
        # Overridden by registrations that are their own callback (a token scope), which saves
        # a callback object, and a reference cycle, per registration.
        assert self._callback is not None
        self._callback(reason)

    def unregister(self) -> bool:
        """Remove the callback; return ``True`` if it had not run and now never will."""
        source = self._source
        if source is None:
            return False
        self._source = None
        return source._remove(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unregister()
