"""Default timeouts, named policies, ``@request_timeout`` and deadline headers."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from request_aborted import (
    RequestAbortedMiddleware,
    RequestTimedOut,
    TimeoutPolicy,
    current_token,
    request_aborted,
    request_timeout,
)
from request_aborted.testing import Exchange

POLICIES: dict[str, float | TimeoutPolicy | None] = {
    "reports": TimeoutPolicy(0.03, status_code=503),
    "quick": 0.02,
}


async def sleepy(request: Request) -> Response:
    async with request_aborted(request).scope():
        await asyncio.sleep(0.3)
    return PlainTextResponse("finished")


def blocking(request: Request) -> Response:
    token = request_aborted(request)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        token.raise_if_cancellation_requested()
        time.sleep(0.002)
    return PlainTextResponse("finished")


def run(app: RequestAbortedMiddleware, path: str = "/", **options: object) -> Exchange:
    return asyncio.run(Exchange(app, path=path, **options).run())  # type: ignore[arg-type]


def test_timeout_off_by_default() -> None:
    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", sleepy)]))
    exchange = run(app)
    assert exchange.status == 200
    assert exchange.token is not None and exchange.token.deadline is None


def test_timeout_default_fires_request_timed_out() -> None:
    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", sleepy)]), timeout=0.02)
    exchange = run(app)
    assert exchange.status == 504
    assert isinstance(exchange.reason, RequestTimedOut)
    assert exchange.reason.timeout == 0.02
    assert exchange.reason.policy is None


def test_timeout_named_default_policy_uses_its_status() -> None:
    app = RequestAbortedMiddleware(
        Starlette(routes=[Route("/", sleepy)]), timeout="reports", policies=POLICIES
    )
    exchange = run(app)
    assert exchange.status == 503
    assert isinstance(exchange.reason, RequestTimedOut)
    assert exchange.reason.policy == "reports"


def test_timeout_unknown_policy_name_fails_at_setup() -> None:
    with pytest.raises(LookupError, match="reports"):
        RequestAbortedMiddleware(Starlette(), timeout="reports")


@pytest.mark.parametrize("timeout", [0.02, "plain"])
def test_timeout_status_applies_to_timeouts_given_as_numbers(timeout: float | str) -> None:
    app = RequestAbortedMiddleware(
        Starlette(routes=[Route("/", sleepy)]),
        timeout=timeout,
        policies={"plain": 0.02, "own": TimeoutPolicy(0.02, status_code=503)},
        timeout_status=408,
    )
    assert run(app).status == 408


def test_timeout_status_does_not_override_a_policy_with_its_own_status() -> None:
    app = RequestAbortedMiddleware(
        Starlette(routes=[Route("/", sleepy)]),
        timeout="own",
        policies={"own": TimeoutPolicy(0.02, status_code=503)},
        timeout_status=408,
    )
    assert run(app).status == 503


def test_timeout_status_applies_to_deadline_headers() -> None:
    app = RequestAbortedMiddleware(
        Starlette(routes=[Route("/", sleepy)]),
        deadline_headers=["grpc-timeout"],
        timeout_status=408,
    )
    assert run(app, headers=[("grpc-timeout", "20m")]).status == 408


def test_timeout_does_not_fire_after_the_response_completed() -> None:
    async def quick(request: Request) -> Response:
        assert request_aborted(request).deadline is not None
        return PlainTextResponse("ok")

    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", quick)]), timeout=0.01)

    async def main() -> Exchange:
        exchange = await Exchange(app).run()
        await asyncio.sleep(0.03)
        return exchange

    exchange = asyncio.run(main())
    assert exchange.status == 200
    assert exchange.reason is None


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize(("decorator", "status"), [(0.02, 504), ("reports", 503), ("quick", 504)])
def test_timeout_decorator_on_starlette_endpoint(
    sync: bool, decorator: float | str, status: int
) -> None:
    endpoint = request_timeout(decorator)(blocking if sync else sleepy)
    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", endpoint)]), policies=POLICIES)
    exchange = run(app)
    assert exchange.status == status
    assert isinstance(exchange.reason, RequestTimedOut)


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_timeout_decorator_none_disables_the_default(sync: bool) -> None:
    endpoint = request_timeout(None)(blocking if sync else sleepy)
    # A sync endpoint re-arms the timer from its worker thread: leave the thread time to start.
    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", endpoint)]), timeout=0.15)
    exchange = run(app)
    assert exchange.status == 200
    assert exchange.body == b"finished"


def test_timeout_decorator_longer_than_default_lengthens_it() -> None:
    remaining: list[float | None] = []

    @request_timeout(5)
    async def endpoint(request: Request) -> Response:
        remaining.append(request_aborted(request).remaining())
        return PlainTextResponse("ok")

    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", endpoint)]), timeout=0.5)
    assert run(app).status == 200
    assert remaining[0] is not None and 4 < remaining[0] <= 5


def test_timeout_decorator_counts_from_request_arrival() -> None:
    async def slow_start(request: Request) -> Response:
        await asyncio.sleep(0.2)  # a dependency that took its time
        return await inner(request)

    @request_timeout(10.2)
    async def inner(request: Request) -> Response:
        return JSONResponse({"remaining": request_aborted(request).remaining()})

    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", slow_start)]))
    exchange = run(app)
    # From arrival: at most 10.2 - 0.2 s left, however slow the machine (counted from the
    # endpoint's start it would be 10.2 s less the few microseconds since).
    assert 9 < float(exchange.body.split(b":")[1].rstrip(b"}")) <= 10.0


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_timeout_decorator_on_fastapi_path_operations(sync: bool) -> None:
    api = FastAPI()
    if sync:

        @api.get("/report")
        @request_timeout("quick")
        def report_sync() -> dict[str, str]:
            token = current_token()
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                token.raise_if_cancellation_requested()
                time.sleep(0.002)
            return {"done": "yes"}

    else:

        @api.get("/report")
        @request_timeout("quick")
        async def report() -> dict[str, str]:
            async with current_token().scope():
                await asyncio.sleep(0.3)
            return {"done": "yes"}

    @api.get("/free")
    @request_timeout(None)
    async def free() -> dict[str, str]:
        await asyncio.sleep(0.05)
        return {"done": "yes"}

    app = RequestAbortedMiddleware(api, timeout=0.2, policies=POLICIES)
    exchange = run(app, "/report")
    assert exchange.status == 504
    assert isinstance(exchange.reason, RequestTimedOut)
    assert exchange.reason.policy == "quick"
    assert run(app, "/free").body == b'{"done":"yes"}'


def test_timeout_decorator_rejects_non_positive_values() -> None:
    with pytest.raises(ValueError, match="positive"):
        request_timeout(0)
    with pytest.raises(ValueError, match="positive"):
        RequestAbortedMiddleware(Starlette(), timeout=-1)


def test_timeout_decorator_with_unknown_policy_raises_in_the_handler() -> None:
    @request_timeout("nope")
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("never")

    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", endpoint)]))
    with pytest.raises(LookupError, match="nope"):
        run(app)


def deadline_app(**options: object) -> RequestAbortedMiddleware:
    async def endpoint(request: Request) -> Response:
        remaining = request_aborted(request).remaining()
        return JSONResponse({"remaining": remaining})

    return RequestAbortedMiddleware(
        Starlette(routes=[Route("/", endpoint)]),
        deadline_headers=["grpc-timeout", "x-request-timeout-ms"],
        **options,  # type: ignore[arg-type]
    )


def remaining_of(exchange: Exchange) -> float | None:
    value = exchange.body.split(b":")[1].rstrip(b"}")
    return None if value == b"null" else float(value)


@pytest.mark.parametrize(
    ("header", "value", "expected"),
    [
        ("grpc-timeout", "2S", 2.0),
        ("grpc-timeout", "1500m", 1.5),
        ("grpc-timeout", "1M", 5.0),  # longer than the default: ignored
        ("x-request-timeout-ms", "250", 0.25),
        ("X-Request-Timeout-Ms", "750.5", 0.7505),
        ("x-request-timeout-ms", "60000", 5.0),
    ],
)
def test_timeout_deadline_header_shortens_never_lengthens(
    header: str, value: str, expected: float
) -> None:
    exchange = run(deadline_app(timeout=5), headers=[(header, value)])
    remaining = remaining_of(exchange)
    assert remaining is not None
    assert expected - 0.2 < remaining <= expected


def test_timeout_deadline_header_applies_without_default_timeout() -> None:
    exchange = run(deadline_app(), headers=[("grpc-timeout", "3S")])
    remaining = remaining_of(exchange)
    assert remaining is not None and 2.9 < remaining <= 3


def test_timeout_deadline_header_shortest_of_several_wins() -> None:
    headers = [("grpc-timeout", "3S"), ("x-request-timeout-ms", "1000")]
    remaining = remaining_of(run(deadline_app(timeout=5), headers=headers))
    assert remaining is not None and 0.9 < remaining <= 1


def test_timeout_deadline_header_fires_504() -> None:
    app = RequestAbortedMiddleware(
        Starlette(routes=[Route("/", sleepy)]), deadline_headers=["grpc-timeout"]
    )
    exchange = run(app, headers=[("grpc-timeout", "20m")])
    assert exchange.status == 504
    assert isinstance(exchange.reason, RequestTimedOut)
    assert exchange.reason.policy == "deadline-header"


def test_timeout_deadline_header_overrides_a_longer_decorator() -> None:
    endpoint = request_timeout(10)(sleepy)
    app = RequestAbortedMiddleware(
        Starlette(routes=[Route("/", endpoint)]), deadline_headers=["x-request-timeout-ms"]
    )
    exchange = run(app, headers=[("x-request-timeout-ms", "20")])
    assert exchange.status == 504


def test_timeout_deadline_header_survives_request_timeout_none() -> None:
    endpoint = request_timeout(None)(sleepy)
    app = RequestAbortedMiddleware(
        Starlette(routes=[Route("/", endpoint)]),
        timeout=5,
        deadline_headers=["x-request-timeout-ms"],
    )
    assert run(app, headers=[("x-request-timeout-ms", "20")]).status == 504


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("grpc-timeout", "soon"),
        ("grpc-timeout", "123456789S"),
        ("grpc-timeout", "10x"),
        ("grpc-timeout", ""),
        ("x-request-timeout-ms", "-5"),
        ("x-request-timeout-ms", "nan"),
        ("x-request-timeout-ms", "ten"),
    ],
)
def test_timeout_malformed_deadline_header_is_ignored(
    header: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="request_aborted")
    exchange = run(deadline_app(timeout=5), headers=[(header, value)])
    assert exchange.status == 200
    remaining = remaining_of(exchange)
    assert remaining is not None and 4.9 < remaining <= 5
    assert any("malformed" in r.getMessage() for r in caplog.records)


def test_timeout_deadline_headers_ignored_unless_configured() -> None:
    async def endpoint(request: Request) -> Response:
        return JSONResponse({"remaining": request_aborted(request).remaining()})

    app = RequestAbortedMiddleware(Starlette(routes=[Route("/", endpoint)]))
    assert remaining_of(run(app, headers=[("grpc-timeout", "1S")])) is None


def test_enforce_after_cancels_a_handler_that_ignores_its_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cleaned: list[str] = []

    async def stubborn(request: Request) -> Response:
        try:
            await asyncio.sleep(10)  # ignores its token
        finally:
            cleaned.append("finally")
        return PlainTextResponse("never")

    app = RequestAbortedMiddleware(
        Starlette(routes=[Route("/stubborn", stubborn)]), timeout=0.02, enforce_after=0.03
    )
    started = time.monotonic()
    exchange = run(app, "/stubborn")
    elapsed = time.monotonic() - started
    assert 0.045 <= elapsed < 1
    assert exchange.status == 504
    assert cleaned == ["finally"]
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "request_aborted" and r.levelno == logging.WARNING
    ]
    assert any("GET /stubborn (" in w and "stubborn)" in w and "0.03s" in w for w in warnings)


def test_enforce_after_leaves_a_cooperative_handler_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = RequestAbortedMiddleware(
        Starlette(routes=[Route("/", sleepy)]), timeout=0.02, enforce_after=5
    )
    started = time.monotonic()
    assert run(app).status == 504
    assert time.monotonic() - started < 4  # it ended by itself, long before enforcement
    assert not any("ignored its cancelled token" in r.getMessage() for r in caplog.records)
