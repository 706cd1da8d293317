"""Uploads: the size policy and the naming; the store writes the bytes.

A ``Content-Length`` over the limit is refused before a byte is read. A body without one (chunked)
is cut off the moment it passes the limit. Either way the answer is 413 and nothing stays on disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterable

from repositories import StoredUpload, UploadStore, UploadTooLarge
from request_aborted import CancellationToken

from .errors import PayloadTooLarge

__all__ = ["UploadsService"]


class UploadsService:
    """Accepts streamed uploads up to ``max_bytes``."""

    def __init__(self, store: UploadStore, *, max_bytes: int) -> None:
        self._store = store
        self.max_bytes = max_bytes

    async def save(
        self,
        chunks: AsyncIterable[bytes],
        declared_length: int | None,
        token: CancellationToken,
    ) -> StoredUpload:
        if declared_length is not None and declared_length > self.max_bytes:
            raise PayloadTooLarge(self._too_large())
        try:
            return await self._store.save(chunks, self.max_bytes, token)
        except UploadTooLarge:
            raise PayloadTooLarge(self._too_large()) from None

    def _too_large(self) -> str:
        return f"uploads are limited to {self.max_bytes} bytes"
