"""``HONOR_CANCELLATION=0``: the same app, as if nobody had passed the token along. Benchmarks only.

The handlers stay exactly as they are; this wrapper swaps the token they are given for
``CancellationToken.NONE``, which is what an application that never forwards its token amounts
to. Comparing the two under the same load (bench/) shows what honouring the token saves: the
database and upstream work nobody waits for any more.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from request_aborted import CancellationToken

__all__ = ["ignoring_cancellation"]

F = TypeVar("F", bound=Callable[..., Any])


def ignoring_cancellation(handler: F) -> F:
    """Call ``handler`` with ``CancellationToken.NONE`` for each of its token parameters."""
    hints = typing.get_type_hints(handler)
    names = [
        name
        for name in inspect.signature(handler).parameters
        if hints.get(name) is CancellationToken
    ]

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name in names:
            kwargs[name] = CancellationToken.NONE  # request-aborted: ignore[RA103]
        return await handler(*args, **kwargs)

    return typing.cast(F, wrapper)
