"""Where the middleware's microseconds over the floor go: its per-request parts, timed one by one.

``bench_cpu.py`` says how much a request costs over the floor (``bench/apps.py``, ``_Floor``);
this says what that is made of, so that a goal can be judged against the parts it would have to
remove. It reaches into the package's internals on purpose (the request object, the loop cache,
the source's initialiser): they are what is being measured.

Two kinds of figure, nanoseconds per operation:

* **whole requests**, driven without a server, a socket or an event-loop turn: each variant's
  ``__call__`` runs a request whose app sends a 13-byte response (``unused``) or first enters and
  leaves ``token.scope()`` (``observed``; the floor's app a do-nothing ``async with``), the
  coroutine finishing in one ``send(None)``. Batches of 50 requests, with a loop turn of 1.2 ms
  between batches so that the watchlist's timer runs as it does under a server (outside the
  timed part). Two differences to the floor: the median of the per-round differences, and the
  difference of the fastest rounds (the steadier one on a shared machine, where whole rounds
  slow down by 20-50 %).
* **parts**, in ``timeit`` loops (best of 7): the request object made and ended against the
  floor's two objects, the loop cache check, the source's fields, the token view, the start
  time, a context-variable set and reset, and a scope's enter and exit against a do-nothing
  ``async with``.

Figures move with the machine; compare parts within one run.

Reproduce with::

    .venv/bin/python bench/bench_parts.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
import timeit
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

import apps
from starlette.types import Message, Receive, Scope, Send

from request_aborted import CancellationToken, RequestAbortedMiddleware
from request_aborted._context import scope_token
from request_aborted._current import current
from request_aborted._request import HttpRequest

START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-length", b"13")],
}
BODY: Message = {"type": "http.response.body", "body": b"Hello, World!"}
SCOPE: Scope = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "path": "/plaintext",
    "headers": [(b"host", b"127.0.0.1")],
    "state": {},
}
BATCH = 50

App = Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]


class Nothing:
    """The floor's block: an ``async with`` that does nothing."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        return None


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Message) -> None:
    return None


async def unused(scope: Scope, receive: Receive, send: Send) -> None:
    await send(START)
    await send(BODY)


async def observed(scope: Scope, receive: Receive, send: Send) -> None:
    async with scope_token(scope).scope():
        pass
    await send(START)
    await send(BODY)


async def nothing(scope: Scope, receive: Receive, send: Send) -> None:
    async with Nothing():
        pass
    await send(START)
    await send(BODY)


def batch(app: App, requests: int) -> float:
    """Seconds for ``requests`` requests, each finished in one step of its coroutine."""
    started = time.perf_counter()
    for _ in range(requests):
        coroutine = app(SCOPE.copy(), receive, send)
        try:
            coroutine.send(None)
        except StopIteration:
            pass
        else:
            raise RuntimeError("a request suspended: this driver runs requests in one step")
    return time.perf_counter() - started


async def whole_requests(rounds_wanted: int, per_round: int) -> dict[str, float]:
    variants: dict[str, App] = {
        "floor, unused": apps._Floor(unused),
        "ours, unused": RequestAbortedMiddleware(unused),
        "floor, do-nothing block": apps._Floor(nothing),
        "ours, token.scope()": RequestAbortedMiddleware(observed),
    }
    rounds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds_wanted):
        for name, app in variants.items():
            total = 0.0
            for _ in range(per_round // BATCH):
                await asyncio.sleep(0.0012)  # the watchlist's timer runs, untimed
                total += batch(app, BATCH)
            rounds[name].append(total / per_round * 1e9)
    found = {}
    for name, ours, floor in (
        ("unused: ours over the floor", "ours, unused", "floor, unused"),
        ("observed: ours over the floor's block", "ours, token.scope()", "floor, do-nothing block"),
    ):
        found[f"{name}, paired median"] = statistics.median(
            a - b for a, b in zip(rounds[ours], rounds[floor], strict=True)
        )
        found[f"{name}, fastest rounds"] = min(rounds[ours]) - min(rounds[floor])
    return found


def best(statement: str, names: dict[str, Any], number: int) -> float:
    return min(timeit.repeat(statement, globals=names, number=number, repeat=7)) / number * 1e9


async def parts(number: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    middleware = RequestAbortedMiddleware(unused)
    request = HttpRequest(middleware, middleware.running(), SCOPE.copy(), receive, send)
    names: dict[str, Any] = {
        "HttpRequest": HttpRequest,
        "middleware": middleware,
        "running": middleware.running(),
        "SCOPE": SCOPE,
        "receive": receive,
        "send": send,
        "apps": apps,
        "CancellationToken": CancellationToken,
        "request": request,
        "lock": threading.Lock(),
        "loop": loop,
        "thread": threading.get_ident(),
        "time": time,
        "current": current,
        "get_ident": threading.get_ident,
    }
    copy = best("SCOPE.copy()", names, number)
    found = {
        "the request object, made and ended": best(
            "HttpRequest(middleware, running, SCOPE.copy(), receive, send).end()", names, number
        )
        - copy,
        "the floor's request and token objects": best(
            "s = SCOPE.copy(); s['t'] = apps._FloorToken(apps._FloorRequest(receive, send))",
            names,
            number,
        )
        - copy,
        "  of which: the loop cache, checked": best(
            "r = middleware._running; r[0] == get_ident() and r[1].is_running()", names, number
        ),
        "  of which: the token source's fields (_init_source)": best(
            "request._init_source(lock, loop, thread)", names, number
        ),
        "  of which: the token view": best("CancellationToken(None)", names, number),
        "  of which: the start time (time.monotonic)": best("time.monotonic()", names, number),
        "a context-variable set and reset (both pay it)": best(
            "current.reset(current.set(request))", names, number
        ),
    }
    found.update(await scope_parts(number // 2))
    return found


async def scope_parts(number: int) -> dict[str, float]:
    """A held scope of the current request's token, entered and left, against ``Nothing``."""
    middleware = RequestAbortedMiddleware(unused)
    request = HttpRequest(middleware, middleware.running(), SCOPE.copy(), receive, send)
    token = request.token
    reset = current.set(request)
    request._observed()  # looked at already: the scope alone is timed
    try:
        scoped, plain = [], []
        for _ in range(7):
            started = time.perf_counter()
            for _ in range(number):
                async with token.scope():
                    pass
            scoped.append((time.perf_counter() - started) / number * 1e9)
            started = time.perf_counter()
            for _ in range(number):
                async with Nothing():
                    pass
            plain.append((time.perf_counter() - started) / number * 1e9)
    finally:
        current.reset(reset)
        request.end()
    return {
        "token.scope(), entered and left": min(scoped),
        "a do-nothing async with, entered and left": min(plain),
    }


async def main(args: argparse.Namespace) -> None:
    print(f"Python {sys.version.split()[0]}, uvloop {uvloop.__version__}; ns per operation")
    print()
    print(f"| whole requests ({args.rounds} rounds) | ns |")
    print("|---|---|")
    for name, value in (await whole_requests(args.rounds, args.requests)).items():
        print(f"| {name} | {value:+.0f} |")
    print()
    print("| part (best of 7 timeit loops) | ns |")
    print("|---|---|")
    for name, value in (await parts(args.number)).items():
        print(f"| {name} | {value:.0f} |")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=25, help="rounds of whole requests")
    parser.add_argument(
        "--requests", type=int, default=10_000, help="whole requests per variant and round"
    )
    parser.add_argument("--number", type=int, default=200_000, help="timeit loops per part")
    return parser.parse_args(argv)


if __name__ == "__main__":
    uvloop.run(main(parse()))
