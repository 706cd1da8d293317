"""The well-behaved background service of the shutdown apps (asyncio's and trio's alike)."""

from __future__ import annotations

import logging

import anyio
import sniffio

from request_aborted import BackgroundService, CancellationToken, OperationCancelled

log = logging.getLogger("ticker")


class Ticker(BackgroundService):
    """Each iteration runs under the token and the loop ends when it fires; it says on which
    event loop it runs (``ticker running under trio``) and why it stopped."""

    async def execute(self, stopping_token: CancellationToken) -> None:
        iterations = 0
        try:
            while True:
                async with stopping_token.scope():
                    await anyio.sleep(0.05)
                iterations += 1
                if iterations == 1:
                    log.info("ticker running under %s", sniffio.current_async_library())
        except OperationCancelled as cancelled:
            log.info("ticker stopped: %s after %d iterations", type(cancelled.reason).__name__,
                     iterations)  # fmt: skip
