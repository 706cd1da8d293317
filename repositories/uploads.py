"""Uploaded files on local disk, written as they arrive and never left half-written.

A file is written under a ``.part`` name and renamed only once the last byte is in. Whatever stops
the upload early - the client leaving, the token firing, the size limit - removes the partial file
on the way out, so the directory holds finished uploads and nothing else.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

import anyio

from request_aborted import CancellationToken

__all__ = ["StoredUpload", "UploadStore", "UploadTooLarge"]


class UploadTooLarge(Exception):
    """Raised when the body grows past the store's limit; the partial file is already gone."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is larger than the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class StoredUpload:
    """A finished upload."""

    id: str
    path: Path
    size: int
    sha256: str


class UploadStore:
    """Writes uploads into one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def save(
        self, chunks: AsyncIterable[bytes], limit: int, token: CancellationToken
    ) -> StoredUpload:
        """Write ``chunks`` to a new file of at most ``limit`` bytes and return what was stored.

        The token is checked before every chunk: a request that timed out stops writing even
        while the client is still sending.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        upload_id = uuid.uuid4().hex
        partial = self.root / f"{upload_id}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            async with await anyio.open_file(partial, "wb") as file:
                async for chunk in chunks:
                    token.raise_if_cancellation_requested()
                    size += len(chunk)
                    if size > limit:
                        raise UploadTooLarge(limit)
                    digest.update(chunk)
                    await file.write(chunk)
            final = partial.with_suffix("")
            partial.rename(final)
        except BaseException:
            # Cancelled, disconnected or too large: a partial file is worse than none.
            partial.unlink(missing_ok=True)
            raise
        return StoredUpload(upload_id, final, size, digest.hexdigest())
