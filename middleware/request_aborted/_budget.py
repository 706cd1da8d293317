"""Whose timeout was it? A peer's timeout that the integrations capped to a token's budget.

The integrations hand a token's remaining budget to whatever they wait on: httpx's timeouts
become ``min(configured, remaining)``, a PostgreSQL transaction gets it as ``statement_timeout``,
a wait for a pooled connection ends with it. Such a timeout can fire at the token's deadline a
moment before the token's own timer runs (a busy event loop runs timers late). It is then the
token's deadline, not a slow peer, and it ends the way the token would: with the token's own
reason (``RequestTimedOut`` with its policy, say) once the timer catches up, or
``DeadlineExceeded`` if it has not within ``GRACE``. A timeout that fires while budget remains was
somebody else's, stricter, and stays what it was.

One grace for every integration: each waits for the same thing, the token's timer on the caller's
loop, and the wait ends the moment that timer runs; ``GRACE`` only bounds how late a loaded loop
may run it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from ._exceptions import DeadlineExceeded
from ._token import CancellationToken

__all__ = ["GRACE", "SPENT", "budget_spent", "deadline_reason"]

SPENT: Final = 0.005
"""Seconds of budget at or below which a capped timeout is the token's deadline firing."""
GRACE: Final = 0.1
"""Seconds a timeout that spent the budget waits for the token's own timer and reason."""


def budget_spent(token: CancellationToken) -> bool:
    """Whether ``token``'s deadline has come (within ``SPENT``): a capped timeout now is its own."""
    remaining = token.remaining()
    return remaining is not None and remaining <= SPENT


async def deadline_reason(token: CancellationToken, budget: float | None = None) -> BaseException:
    """The reason a timeout that spent ``token``'s budget stands for; see the module docstring.

    ``budget``: the seconds the timeout was given, for ``DeadlineExceeded`` (``None``: unknown).
    """
    if token.reason is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(token.wait(), GRACE)
    return token.reason or DeadlineExceeded(budget)
