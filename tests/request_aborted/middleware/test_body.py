"""The body reaches the app byte-identical however the channel reads it (docs/hazards.md 1)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable

import pytest
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from request_aborted import RequestAbortedMiddleware, current_token, request_aborted
from request_aborted.testing import Exchange

from ._servers import LateUpload, chunks_of

BIG = os.urandom(10 * 1024 * 1024)
DIGEST = hashlib.sha256(BIG).hexdigest()
PIECES = chunks_of(BIG, 64 * 1024, empty_at=7)


async def read_body(request: Request) -> bytes:
    return await request.body()


async def read_stream(request: Request) -> bytes:
    return b"".join([chunk async for chunk in request.stream()])


async def read_form(request: Request) -> bytes:
    async with request.form() as form:
        upload = form["file"]
        assert not isinstance(upload, str)
        return await upload.read()


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "----request-aborted-boundary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), boundary


def digest_app(read: Callable[[Request], Awaitable[bytes]]) -> RequestAbortedMiddleware:
    async def endpoint(request: Request) -> Response:
        token = request_aborted(request)
        assert not token.is_cancellation_requested  # observed early: the pump reads ahead
        await asyncio.sleep(0.1)  # the body arrives while the handler sleeps
        data = await read(request)
        return JSONResponse({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})

    return RequestAbortedMiddleware(Starlette(routes=[Route("/", endpoint, methods=["POST"])]))


@pytest.mark.parametrize("read", [read_body, read_stream], ids=["body", "stream"])
@pytest.mark.parametrize("late", [False, True], ids=["ready", "late"])
def test_body_ten_megabytes_in_chunks_arrive_byte_identical(
    read: Callable[[Request], Awaitable[bytes]], late: bool
) -> None:
    kind = LateUpload if late else Exchange
    exchange = kind(digest_app(read), method="POST", body=PIECES, timeout=30)
    asyncio.run(exchange.run())
    assert exchange.status == 200
    assert exchange.body == f'{{"size":{len(BIG)},"sha256":"{DIGEST}"}}'.encode()
    assert exchange.token is not None and not exchange.token.is_cancellation_requested


def test_body_multipart_form_of_ten_megabytes_arrives_byte_identical() -> None:
    payload, boundary = multipart(BIG)
    exchange = LateUpload(
        digest_app(read_form),
        method="POST",
        headers=[("content-type", f"multipart/form-data; boundary={boundary}")],
        body=chunks_of(payload, 50_000, empty_at=3),
        timeout=30,
    )
    asyncio.run(exchange.run())
    assert exchange.status == 200, exchange.body
    assert exchange.body == f'{{"size":{len(BIG)},"sha256":"{DIGEST}"}}'.encode()


def test_body_fastapi_handler_taking_only_request_reads_everything() -> None:
    api = FastAPI()

    @api.post("/upload")
    async def upload(request: FastAPIRequest) -> dict[str, object]:
        assert not current_token().is_cancellation_requested  # starts the pump
        await asyncio.sleep(0.05)
        data = await request.body()
        return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    exchange = LateUpload(
        RequestAbortedMiddleware(api), method="POST", path="/upload", body=PIECES, timeout=30
    )
    asyncio.run(exchange.run())
    assert exchange.status == 200
    assert exchange.body == f'{{"size":{len(BIG)},"sha256":"{DIGEST}"}}'.encode()


def test_body_order_is_kept_when_reads_interleave_with_the_pump() -> None:
    pieces = [bytes([i]) * (i + 1) for i in range(50)]
    pieces.insert(10, b"")

    async def endpoint(request: Request) -> Response:
        token = request_aborted(request)
        received = bytearray()
        async for chunk in request.stream():
            received += chunk
            assert not token.is_cancellation_requested
            await asyncio.sleep(0)
        return Response(bytes(received))

    app = RequestAbortedMiddleware(
        Starlette(routes=[Route("/", endpoint, methods=["POST"])]), max_buffer=64
    )
    exchange = LateUpload(app, method="POST", body=pieces)
    asyncio.run(exchange.run())
    assert exchange.body == b"".join(pieces)
