"""Hand-made servers for the tests that need more control than ``request_aborted.testing``."""

from __future__ import annotations

import asyncio

from starlette.types import Message

from request_aborted.testing import Exchange


class LateUpload(Exchange):
    """An exchange whose client starts sending its body only after ``delay`` seconds."""

    delay = 0.05

    async def receive(self) -> Message:
        if self.received_bytes == 0 and self.receive_calls == 0:
            await asyncio.sleep(self.delay)
        return await super().receive()


def chunks_of(data: bytes, size: int, *, empty_at: int | None = None) -> list[bytes]:
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    if empty_at is not None:
        pieces.insert(empty_at, b"")
    return pieces


class FailingServer(Exchange):
    """An exchange whose server ``receive()`` raises ``error`` from call number ``fail_at`` on."""

    fail_at = 2
    error: BaseException = ConnectionResetError("connection reset by peer")

    async def receive(self) -> Message:
        if self.receive_calls + 1 >= self.fail_at:
            self.receive_calls += 1
            await asyncio.sleep(0.01)
            raise self.error
        return await super().receive()


class YieldingServer(Exchange):
    """An exchange whose ``receive()`` always yields first, so a spinning reader shows in counts."""

    async def receive(self) -> Message:
        await asyncio.sleep(0)
        return await super().receive()
