import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from request_aborted import (
    ClientDisconnected,
    OperationCancelled,
    RequestAbortedMiddleware,
    request_aborted,
)
from request_aborted.testing import Exchange, Phase, Vanish

cleaned_up: list[str] = []


async def report(request: Request) -> PlainTextResponse:
    try:
        async with request_aborted(request).scope():
            await asyncio.sleep(30)  # the slow query
    except OperationCancelled:
        cleaned_up.append("query cancelled")
        raise
    return PlainTextResponse("report")


app = RequestAbortedMiddleware(Starlette(routes=[Route("/report", report)]))


def test_report_stops_when_the_client_leaves() -> None:
    exchange = Exchange(app, path="/report", vanish=Vanish.in_handler(delay=0.05))
    asyncio.run(exchange.run())

    assert exchange.disconnected_at is Phase.HANDLER
    assert isinstance(exchange.reason, ClientDisconnected)  # why the request's token fired
    assert cleaned_up == ["query cancelled"]  # the handler's cleanup ran
    assert exchange.status is None  # nothing reached the client that left


if __name__ == "__main__":  # pytest finds the test; run as a script, it runs it once
    test_report_stops_when_the_client_leaves()
    print("ok")
