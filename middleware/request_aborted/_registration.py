"""A callback registered on a token source, and the handle that unregisters it."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from ._token import CancellationTokenSource

__all__ = ["Callback", "Registration"]

Callback = Callable[[BaseException], object]


class Registration:
    """A callback registered on a token; unregister it when the work it guards is over.

    Unregistering matters for long-lived tokens: a registration that is never removed keeps its
    callback, and everything the callback refers to, alive for as long as the source lives.
    """

    __slots__ = ("_callback", "_source")

    def __init__(self, source: CancellationTokenSource | None, callback: Callback | None) -> None:
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
        with source._lock:
            callbacks = source._callbacks
            if callbacks is None:
                return False
            return callbacks.pop(self, False) is None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unregister()
