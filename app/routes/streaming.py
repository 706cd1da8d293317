"""A streaming response that closes its generator in the request's own task.

Starlette's ``StreamingResponse`` is not used for the export, for two reasons that matter when
the generator holds a database cursor:

* it never closes its iterator: when the client leaves mid-stream, the generator - with the
  cursor, the session and their ``cancellable`` block inside - is left for the garbage collector
  to finalise, later, in another task;
* below ASGI spec 2.4 (uvicorn advertises 2.3) it reads ``receive()`` itself to spot the
  disconnect and then cancels the stream with a task-group cancel that can land inside the
  database driver, which costs the pooled connection.

Here the request's token does that job: when the client leaves, the token fires, the cursor's next
fetch is refused with ``OperationCancelled``, and the generator is closed right here.

A handler may start the generator itself (``first=await anext(chunks)``) before it returns the
response: whatever the first chunk needs (a pooled connection, a query) then fails while an error
can still be a problem document, before any header is sent.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["ClosingStreamingResponse"]


class ClosingStreamingResponse(Response):
    """Send ``first`` (if given), then each chunk of ``chunks`` as it comes; always ``aclose()``
    ``chunks`` before returning, whether or not the response could start."""

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        *,
        media_type: str,
        headers: Mapping[str, str] | None = None,
        status_code: int = 200,
        first: bytes | None = None,
    ) -> None:
        self.chunks = chunks
        self.first = first
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with aclosing(self.chunks) as chunks:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if self.first is not None:
                await send({"type": "http.response.body", "body": self.first, "more_body": True})
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
