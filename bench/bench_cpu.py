"""CPU per request of the middleware over the floor, in-process: no sockets, no server, no wrk.

The server benchmarks (``bench_overhead.py``) give ratios of request rates, which include the
server's and the kernel's share and move with whatever else the machine runs. This one gives
microseconds of this process's CPU time per request, for the apps of ``bench/apps.py``, driven by a
minimal ASGI driver on one event loop:

* per request, the driver does what a server does and the same for every app: a fresh ``scope``
  dict (copied from a template), a fresh cycle object whose ``receive`` returns the empty request
  body once and then waits until the response completed (then ``http.disconnect``, as uvicorn
  does), whose ``send`` checks the status and counts the bytes, and a task per request (a server
  runs each request in its own task, and the middleware's ``token.scope()`` cancels that task);
* each app is ``Starlette`` with the one route under test (the endpoint functions of
  ``bench/apps.py``) and the middleware under test, so that no variant pays for matching routes
  that another does not (Starlette tries routes in order, each miss about 0.7 us);
* one *round* runs every variant for one batch of ``--requests`` requests, in an order rotated
  from round to round; a batch's cost is ``time.process_time()`` (this process's CPU time, so
  time the scheduler gives to other work is not counted) over its requests. The per-variant
  figure is the median over rounds; the ratio of two variants is taken within each round, so a
  slow moment of the machine shifts both sides of it, and the median over rounds is reported.

On a shared virtual machine the CPU time a request takes moves with the machine's load (the other
hyperthread, the host's caches): a whole run can read 40 % slower than the next, and differences
in microseconds with it, while the ratio of two variants measured side by side stays put (1.38 and
1.38 in two runs whose raw differences read 7.7 and 10.5 us). So a difference is reported as
*uncontended microseconds*: (paired ratio - 1) times the subtrahend's fastest batch of the run,
the cost at the least contended speed the machine showed; the raw median of the per-round
differences is printed beside it. Verdicts use the uncontended figure.

Variants (the letters of ``bench_overhead.py``):

* ``driver``: an ASGI app that sends the response itself, no Starlette: the driver's own cost
* (a) bare Starlette, ``/plaintext``; (a+sleep) bare, the handler awaits ``sleep(0)``
* (h) the floor (``_Floor``), ``/plaintext``; (h') the floor, ``sleep(0)`` inside an
  ``async with`` that does nothing (``/plaintext-nothing``)
* (b) ``RequestAbortedMiddleware``, token unused (``/plaintext``); (c) the middleware, ``sleep(0)``
  inside ``token.scope()`` (``/plaintext-token``)

(``--endpoint json``: the ``/json`` family of the same handlers instead.)

Differences reported: (b)-(h) *unused over the floor* (issue 17's goal: <= 0.3 us) and (c)-(h')
*observed over the floor with a block* (goal: <= 2 us), and for reference (h)-(a), (h')-(a+sleep).

``--candidate DIR`` (repeatable) imports another copy of the package from ``DIR/request_aborted``
into the same process (an older commit's: ``git archive COMMIT middleware/request_aborted | tar -x
-C DIR --strip-components=1``) and measures it as (b*N) and (c*N) in the same rounds, so (b)-(b*N)
and (c)-(c*N) are this tree over the candidate, paired; a copy of this tree itself is the A/A
control.

Requests run one at a time by default (``--concurrency 1``): each finishes well inside the
middleware's ``watch_delay``, so no watcher task starts; ``--concurrency K`` keeps K requests in
flight (K connections), interleaving their ``sleep(0)``.

Reproduce with::

    .venv/bin/python bench/bench_cpu.py            # prints the tables (about 25 s)
    .venv/bin/python bench/bench_cpu.py --write    # and records them in bench/results/overhead.md
    .venv/bin/python bench/bench_cpu.py --json     # for scripts
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import apps
from _util import command_line, environment, table, write_section
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECTION = "bench_cpu"
PATH = "/"
BODY = apps.TEXT.encode()
GOAL_UNUSED_US = 0.3
GOAL_OBSERVED_US = 2.0

_TEMPLATE: Scope = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 50000),
    "scheme": "http",
    "method": "GET",
    "root_path": "",
    "path": PATH,
    "raw_path": PATH.encode(),
    "query_string": b"",
    "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench"), (b"accept", b"*/*")],
    "state": {},
}


class _Cycle:
    """One request's ``receive`` and ``send``, as a server gives them (uvicorn's shape, smaller).

    ``receive`` hands out the (empty) body once; after that it waits until the response is
    complete and then reports ``http.disconnect``, so a watcher that reads ahead parks here as on
    a real connection. ``send`` checks the status and counts the body.
    """

    __slots__ = ("body_sent", "complete", "received", "status", "waiter")

    def __init__(self) -> None:
        self.received = False
        self.complete = False
        self.status = 0
        self.body_sent = 0
        self.waiter: asyncio.Future[None] | None = None

    async def receive(self) -> Message:
        if not self.received:
            self.received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if not self.complete:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
        elif kind == "http.response.body":
            self.body_sent += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete = True
                if self.waiter is not None and not self.waiter.done():
                    self.waiter.set_result(None)


async def _driver_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The driver alone: the least an app can do to answer."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": BODY})


def _starlette(endpoint: Callable[..., Any], middleware: type | None) -> ASGIApp:
    stack = [Middleware(middleware)] if middleware is not None else []
    return Starlette(routes=[Route(PATH, endpoint)], middleware=stack)


@dataclass(frozen=True)
class Endpoint:
    """One of ``apps.py``'s endpoint families: the handler alone, after ``sleep(0)``, with the
    ``sleep(0)`` inside a do-nothing ``async with``, and the path of the one inside
    ``token.scope()``."""

    plain: Callable[..., Any]
    sleep: Callable[..., Any]
    nothing: Callable[..., Any]
    token_path: str


ENDPOINTS = {
    "plaintext": Endpoint(
        apps.plaintext, apps.plaintext_sleep, apps.plaintext_nothing, "/plaintext-token"
    ),
    "json": Endpoint(apps.json_endpoint, apps.json_sleep, apps.json_nothing, "/json-token"),
}


def _token_endpoint(path: str) -> Callable[..., Any]:
    """``apps.py``'s handler at ``path``: ``sleep(0)`` inside ``token.scope()``."""
    for route in apps._token_routes():
        if route.path == path:
            return route.endpoint
    raise LookupError(f"bench/apps.py has no {path} route")


@dataclass
class Variant:
    key: str
    label: str
    app: ASGIApp
    costs: list[float] = field(default_factory=list)  # us per request, one per round
    extra_tasks: int = 0  # tasks the app started (watchers), over all timed batches
    requests: int = 0  # timed requests, over all rounds


class _TaskCounter:
    """The loop's task factory: counts the tasks started, the driver's own and the app's.

    The app's are watcher tasks: the middleware starts one for a request that observed its token
    and still runs ``watch_delay`` (wall-clock) later, which a request preempted by other work on
    the machine can do even in-process. Every variant pays the same for the counting.
    """

    def __init__(self) -> None:
        self.count = 0

    def __call__(
        self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
    ) -> asyncio.Task[Any]:
        self.count += 1
        return asyncio.Task(coro, loop=loop, **kwargs)


@dataclass
class Candidate:
    """Another copy of ``request_aborted`` (``--candidate DIR``), imported beside this tree's."""

    number: int
    folder: Path
    middleware: type
    token_endpoint: Callable[..., Any]
    modules: dict[str, ModuleType]  # held, so that the copy's modules stay alive


def load_candidate(number: int, folder: Path, endpoint: Endpoint) -> Candidate:
    """Import ``folder/request_aborted`` as a second copy of the package, in this process.

    While it is imported, ``sys.modules`` holds none of this tree's ``request_aborted`` modules,
    so the copy's relative imports and ``apps.py``'s ``from request_aborted import ...`` bind to the
    copy; then this tree's modules are put back. A module-level import inside the copy is the
    copy's; an import run later, inside a function, would find this tree's (the hot path has none).
    """
    import request_aborted  # this tree's, loaded first

    def ours(name: str) -> bool:
        return name == "request_aborted" or name.startswith("request_aborted.")

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(folder))
    try:
        copy = importlib.import_module("request_aborted")
        where = Path(copy.__file__ or "").resolve().parent.parent
        if where != folder.resolve():
            raise SystemExit(f"--candidate {folder}: request_aborted imported from {where}")
        token_endpoint = _token_endpoint(endpoint.token_path)
        modules = {name: module for name, module in sys.modules.items() if ours(name)}
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
    assert copy is not request_aborted
    return Candidate(number, folder, copy.RequestAbortedMiddleware, token_endpoint, modules)


def variants(
    only: Sequence[str] | None,
    candidates: Sequence[Candidate] = (),
    endpoint: Endpoint | None = None,
    middleware: type | None = None,
) -> list[Variant]:
    """The variants, (b) and (c) with ``middleware`` (default: ``RequestAbortedMiddleware``)."""
    from request_aborted import RequestAbortedMiddleware

    endpoint = endpoint or ENDPOINTS["plaintext"]
    ours = middleware or RequestAbortedMiddleware

    found = [
        Variant("driver", "the driver alone (no Starlette)", _driver_app),
        Variant("a", "(a) bare Starlette", _starlette(endpoint.plain, None)),
        Variant("h", "(h) the floor, token unused", _starlette(endpoint.plain, apps._Floor)),
        Variant(
            "b",
            "(b) the middleware, token unused",
            _starlette(endpoint.plain, ours),
        ),
        Variant(
            "a+sleep",
            "(a+sleep) bare, handler awaits sleep(0)",
            _starlette(endpoint.sleep, None),
        ),
        Variant(
            "h'",
            "(h') the floor, sleep(0) inside a do-nothing async with",
            _starlette(endpoint.nothing, apps._Floor),
        ),
        Variant(
            "c",
            "(c) the middleware, sleep(0) inside token.scope()",
            _starlette(_token_endpoint(endpoint.token_path), ours),
        ),
    ]
    for candidate in candidates:
        n = candidate.number
        found += [
            Variant(
                f"b*{n}",
                f"(b*{n}) as (b), candidate {n}'s package",
                _starlette(endpoint.plain, candidate.middleware),
            ),
            Variant(
                f"c*{n}",
                f"(c*{n}) as (c), candidate {n}'s package",
                _starlette(candidate.token_endpoint, candidate.middleware),
            ),
        ]
    if only:
        unknown = set(only) - {variant.key for variant in found}
        if unknown:
            raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")
        found = [variant for variant in found if variant.key in only]
    return found


# (name, minuend, subtrahend, goal in us or None)
DIFFERENCES: tuple[tuple[str, str, str, float | None], ...] = (
    ("unused over the floor, (b)-(h)", "b", "h", GOAL_UNUSED_US),
    ("observed over the floor with a block, (c)-(h')", "c", "h'", GOAL_OBSERVED_US),
    ("the floor over bare, (h)-(a)", "h", "a", None),
    ("the floor with a block over bare with the await, (h')-(a+sleep)", "h'", "a+sleep", None),
    ("observed over bare with the await, (c)-(a+sleep)", "c", "a+sleep", None),
)


def differences(candidates: Sequence[Candidate]) -> list[tuple[str, str, str, float | None]]:
    found = list(DIFFERENCES)
    for candidate in candidates:
        n = candidate.number
        found += [
            (f"candidate {n} unused over the floor, (b*{n})-(h)", f"b*{n}", "h", GOAL_UNUSED_US),
            (
                f"candidate {n} observed over the floor with a block, (c*{n})-(h')",
                f"c*{n}",
                "h'",
                GOAL_OBSERVED_US,
            ),
            (f"this tree over candidate {n}, unused, (b)-(b*{n})", "b", f"b*{n}", None),
            (f"this tree over candidate {n}, observed, (c)-(c*{n})", "c", f"c*{n}", None),
        ]
    return found


async def _one(app: ASGIApp) -> _Cycle:
    cycle = _Cycle()
    await app(dict(_TEMPLATE), cycle.receive, cycle.send)
    return cycle


async def _batch(
    app: ASGIApp, requests: int, concurrency: int, settle: int = 0
) -> tuple[float, int]:
    """Run ``requests`` requests, ``concurrency`` at a time; this process's CPU seconds and the
    number of tasks started besides the driver's own.

    ``settle`` requests run first, untimed: the switch from another variant's code leaves this
    one's out of the CPU caches, a cost a server running one app does not pay per request.
    """
    loop = asyncio.get_running_loop()

    async def connection(count: int) -> None:
        for _ in range(count):
            cycle = await loop.create_task(_one(app))
            if cycle.status != 200 or not cycle.body_sent:
                raise RuntimeError(f"{app!r} answered {cycle.status}, {cycle.body_sent} bytes")

    shares = [requests // concurrency + (n < requests % concurrency) for n in range(concurrency)]
    if settle:
        await connection(settle)
    counter = loop.get_task_factory()
    assert isinstance(counter, _TaskCounter)
    tasks = counter.count
    started = time.process_time()
    if concurrency == 1:
        await connection(requests)
    else:
        await asyncio.gather(*(connection(share) for share in shares))
    seconds = time.process_time() - started
    drivers = requests + (concurrency if concurrency > 1 else 0)
    return seconds, counter.count - tasks - drivers


async def measure(
    found: list[Variant],
    *,
    rounds: int,
    requests: int,
    concurrency: int,
    warmup: int,
    settle: int,
) -> None:
    asyncio.get_running_loop().set_task_factory(_TaskCounter())  # type: ignore[arg-type]
    for variant in found:  # warm-up: code paths, caches, the middleware's per-loop state
        await _batch(variant.app, warmup, concurrency)
    gc.collect()
    for round_ in range(rounds):
        shift = round_ % len(found)
        for variant in found[shift:] + found[:shift]:
            seconds, extra = await _batch(variant.app, requests, concurrency, settle)
            variant.costs.append(seconds / requests * 1e6)
            variant.extra_tasks += extra
            variant.requests += requests


async def profile(found: list[Variant], key: str, requests: int, concurrency: int) -> str:
    """Where one variant's time goes: cProfile over ``requests`` requests, top 30 by own time."""
    import cProfile
    import io
    import pstats

    variant = next((variant for variant in found if variant.key == key), None)
    if variant is None:
        raise SystemExit(f"--profile {key}: not among the variants measured")
    asyncio.get_running_loop().set_task_factory(_TaskCounter())  # type: ignore[arg-type]
    await _batch(variant.app, 1000, concurrency)  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    await _batch(variant.app, requests, concurrency)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(30)
    return f"{variant.label}, {requests} requests under cProfile:\n{out.getvalue()}"


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def _median_interval(values: Sequence[float]) -> tuple[float, float]:
    """A distribution-free 95 % confidence interval of the median (order statistics).

    The ranks n/2 -+ 0.98 sqrt(n) bracket the true median with about 95 % probability whatever the
    distribution, so a figure whose interval is narrow is one a second run will repeat, provided
    the machine's load does not change in between (it moves the whole distribution).
    """
    ordered = sorted(values)
    n = len(ordered)
    spread = 0.98 * n**0.5
    low = max(0, int(n / 2 - spread))
    high = min(n - 1, int(n / 2 + spread + 0.999))
    return ordered[low], ordered[high]


def results(found: list[Variant], candidates: Sequence[Candidate] = ()) -> dict[str, Any]:
    by_key = {variant.key: variant for variant in found}
    out: dict[str, Any] = {
        "variants": {
            variant.key: {
                "label": variant.label,
                "us_per_request": statistics.median(variant.costs),
                "min": min(variant.costs),
                "max": max(variant.costs),
                "watchers_per_request": variant.extra_tasks / variant.requests,
                "rounds": variant.costs,
            }
            for variant in found
        },
        "differences": {},
    }
    for name, minuend, subtrahend, goal in differences(candidates):
        if minuend not in by_key or subtrahend not in by_key:
            continue
        minuends, subtrahends = by_key[minuend].costs, by_key[subtrahend].costs
        per_round = [a - b for a, b in zip(minuends, subtrahends, strict=True)]
        ratios = [a / b for a, b in zip(minuends, subtrahends, strict=True)]
        quartiles = statistics.quantiles(per_round, n=4) if len(per_round) >= 2 else per_round * 3
        ratio = statistics.median(ratios)
        ratio_low, ratio_high = _median_interval(ratios)
        # The paired ratio in microseconds at the machine's least contended speed in this run,
        # the subtrahend's fastest batch: see the module docstring.
        fastest = min(subtrahends)
        uncontended = (ratio - 1) * fastest
        out["differences"][f"{minuend}-{subtrahend}"] = {
            "label": name,
            "us": uncontended,
            "ci_low": (ratio_low - 1) * fastest,
            "ci_high": (ratio_high - 1) * fastest,
            "ratio": ratio,
            "raw_us": statistics.median(per_round),
            "raw_q1": quartiles[0],
            "raw_q3": quartiles[-1],
            "goal_us": goal,
            "met": None if goal is None else uncontended <= goal,
        }
    return out


def report(args: argparse.Namespace, found: dict[str, Any]) -> str:
    variant_rows = [
        (
            v["label"],
            f"{v['us_per_request']:.2f}",
            f"{v['min']:.2f}-{v['max']:.2f}",
            f"{v['watchers_per_request']:.4f}",
        )
        for v in found["variants"].values()
    ]
    difference_rows = []
    for d in found["differences"].values():
        goal = "reference" if d["goal_us"] is None else f"<= {d['goal_us']:g}"
        verdict = {None: "-", True: "met", False: "**not met**"}[d["met"]]
        difference_rows.append(
            (
                d["label"],
                f"{d['us']:+.2f}",
                f"{d['ci_low']:+.2f} to {d['ci_high']:+.2f}",
                f"{d['ratio']:.3f}",
                f"{d['raw_us']:+.2f} ({d['raw_q1']:+.2f} to {d['raw_q3']:+.2f})",
                goal,
                verdict,
            )
        )
    return "\n".join(
        [
            "## CPU per request, in-process (`bench/bench_cpu.py`)",
            "",
            f"reproduce: `{command_line()}`",
            "",
            f"{environment('starlette', 'uvloop', pinned=False)}; loop {args.loop}; "
            f"endpoint {args.endpoint}.",
            "",
            f"{args.rounds} rounds of {args.requests} requests per variant, "
            f"{args.concurrency} in flight; process CPU time per request, median over rounds."
            + "".join(
                f" Candidate {n}: `request_aborted` from `{folder}`."
                for n, folder in enumerate(args.candidate, 1)
            ),
            "",
            table(
                ("variant", "us/request", "range over rounds", "tasks started per request"),
                variant_rows,
            ),
            "",
            table(
                (
                    "difference",
                    "us, uncontended",
                    "95 % interval",
                    "paired ratio",
                    "us as measured (interquartile range)",
                    "goal",
                    "verdict",
                ),
                difference_rows,
            ),
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300, help="rounds (default 300)")
    parser.add_argument(
        "--requests", type=int, default=200, help="requests per variant per round (default 200)"
    )
    parser.add_argument("--warmup", type=int, default=2000, help="requests per variant first")
    parser.add_argument(
        "--settle", type=int, default=20, help="untimed requests at the start of each batch"
    )
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument(
        "--endpoint",
        choices=list(ENDPOINTS),
        default="plaintext",
        help="which of apps.py's endpoint families (default plaintext)",
    )
    parser.add_argument(
        "--only", help="comma-separated variant keys (driver,a,h,b,a+sleep,h',c, b*1,c*1...)"
    )
    parser.add_argument(
        "--candidate",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="a folder holding another request_aborted/ to measure as (b*N) and (c*N) beside "
        "this tree's (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--profile",
        metavar="VARIANT",
        help="instead of measuring, run 10 x --requests requests of VARIANT under cProfile and "
        "print where the time went (cProfile's own cost inflates small functions)",
    )
    parser.add_argument(
        "--write", action="store_true", help="also record the tables in bench/results/overhead.md"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.requests < 1 or args.concurrency < 1:
        parser.error("--rounds, --requests and --concurrency must be at least 1")
    endpoint = ENDPOINTS[args.endpoint]
    candidates = [
        load_candidate(number, folder, endpoint) for number, folder in enumerate(args.candidate, 1)
    ]
    found = variants(args.only.split(",") if args.only else None, candidates, endpoint)
    runner = asyncio.Runner(loop_factory=_loop_factory(args.loop))
    if args.profile:
        with runner:
            print(runner.run(profile(found, args.profile, args.requests * 10, args.concurrency)))
        return
    with runner:
        runner.run(
            measure(
                found,
                rounds=args.rounds,
                requests=args.requests,
                concurrency=args.concurrency,
                warmup=args.warmup,
                settle=args.settle,
            )
        )
    summary = results(found, candidates)
    if args.json:
        summary["environment"] = environment("starlette", "uvloop", pinned=False)
        summary["command"] = command_line()
        summary["settings"] = {
            "rounds": args.rounds,
            "requests": args.requests,
            "concurrency": args.concurrency,
            "loop": args.loop,
            "endpoint": args.endpoint,
            "candidates": [str(folder) for folder in args.candidate],
        }
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        section = report(args, summary)
        print(section)
        if args.write:
            write_section(SECTION, section)


if __name__ == "__main__":
    main()
