"""A body that stops arriving must not outlive the request's timeout or the server's shutdown."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message

from request_aborted import CancellationTokenSource, RequestAbortedMiddleware, ServerShuttingDown


async def upload(request: Request) -> Response:
    body = await request.body()  # the handler does not look at its token at all
    return PlainTextResponse(str(len(body)))


def uploads(**options: object) -> Starlette:
    """Set up as users do: the middleware inside Starlette's error middleware, before routing."""
    return Starlette(
        routes=[Route("/upload", upload, methods=["POST"])],
        middleware=[Middleware(RequestAbortedMiddleware, **options)],
    )


def stalled_client() -> tuple[list[Message], object]:
    """A client that sends a first chunk, then goes quiet without closing the connection."""
    sent: list[Message] = []
    chunks = [{"type": "http.request", "body": b"first", "more_body": True}]

    async def receive() -> Message:
        if chunks:
            return chunks.pop()
        await asyncio.Event().wait()  # never more body, never a disconnect
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    return sent, (receive, send)


def scope() -> dict[str, object]:
    return {"type": "http", "method": "POST", "path": "/upload", "headers": [],
            "query_string": b"", "asgi": {"version": "3.0", "spec_version": "2.3"}}  # fmt: skip


def test_a_body_that_never_arrives_is_cut_off_by_the_request_timeout() -> None:
    app = uploads(timeout=0.1)
    sent, (receive, send) = stalled_client()  # type: ignore[misc]

    async def main() -> None:
        await asyncio.wait_for(app(scope(), receive, send), 5)

    asyncio.run(main())

    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 504


def test_a_body_that_never_arrives_is_cut_off_by_shutdown() -> None:
    async def main() -> None:
        with CancellationTokenSource() as shutdown:
            app = uploads(shutdown=shutdown.token)
            asyncio.get_running_loop().call_later(0.1, shutdown.cancel, ServerShuttingDown())
            await asyncio.wait_for(app(scope(), receive, send), 5)

    sent, (receive, send) = stalled_client()  # type: ignore[misc]
    asyncio.run(main())

    assert sent[0]["status"] == 503
    assert (b"connection", b"close") in sent[0]["headers"]


def test_a_body_that_keeps_arriving_is_read_whole_under_a_timeout() -> None:
    pieces = [b"a" * 1000] * 20
    messages: list[Message] = [
        {"type": "http.request", "body": piece, "more_body": index < len(pieces) - 1}
        for index, piece in enumerate(pieces)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.sleep(0.001)
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    app = uploads(timeout=10)
    asyncio.run(app(scope(), receive, send))

    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"20000"
