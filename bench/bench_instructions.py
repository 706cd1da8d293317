"""Instructions per request of the middleware over the floor, counted by valgrind's callgrind.

``bench_overhead.py`` and ``bench_cpu.py`` measure time, and on a shared virtual machine time moves:
the same code read (c)/(h') 0.946 in one run and 0.900 in the next, a spread as wide as the gap
between the issue's target and where the code stands. This counts the instructions the CPU runs per
request instead, for the same apps and the same in-process driver as ``bench_cpu.py``. Callgrind
counts are deterministic: the same program, inputs and hash seed give the same count, run after
run (0.03 % apart in practice), so a change of a few hundred instructions (~50 ns) shows, and two
trees compare without pairing.

Instructions are not time: a cache miss or a mispredicted branch costs more than an instruction,
and a system call counts as nothing (callgrind sees user space only). Read the counts as the
interpreter's work, the part of a request's cost code changes move; time stays ``bench_cpu.py``'s
and the server benchmarks' business.

How: each variant runs in a process of its own under ``valgrind --tool=callgrind`` twice, after the
same warm-up, once with ``--requests`` requests and once with three times as many; the difference
over the extra requests is the count per request (start-up and warm-up cancel out).
``PYTHONHASHSEED=0``, two processes at a time.

Time under callgrind: the interpreter runs about 50 times slower, so a wall-clock timer sees 50
times fewer requests per millisecond. The middleware's ``watch_delay`` (1 ms by default) is
therefore scaled by ``--time-scale`` (default 50): as many requests share a watchlist tick as at
full speed with one in flight, and none outlives its delay. ``--time-scale 1`` shows the other
regime, where every request that observes its token outlives the delay and gets a watcher task.

Variants (``bench_cpu.py``'s letters): (h) the floor and (b) the middleware, token unused; (h') the
floor, ``sleep(0)`` inside a do-nothing ``async with``, and (c) the middleware, ``sleep(0)`` inside
``token.scope()``; (a) and (a+sleep) bare Starlette. ``--candidate DIR`` counts another copy of
the package (``DIR/request_aborted``, first on the child's ``PYTHONPATH``) as (b*N) and (c*N).

Reproduce with::

    .venv/bin/python bench/bench_instructions.py              # about 2 minutes
    .venv/bin/python bench/bench_instructions.py --candidate /tmp/before/middleware
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cpu
from _util import command_line, environment, table

HERE = Path(__file__).resolve()
SCALED_KEYS = ("b", "c")  # the middleware's variants, whose watch_delay is scaled
DEFAULT_WATCH_DELAY = 0.001


def _app(key: str, endpoint: str, watch_delay: float) -> Any:
    """The variant's app as ``bench_cpu.py`` builds it, the middleware's with ``watch_delay``."""
    from request_aborted import RequestAbortedMiddleware

    class Scaled(RequestAbortedMiddleware):
        def __init__(self, app: Any) -> None:
            super().__init__(app, watch_delay=watch_delay)

    family = bench_cpu.ENDPOINTS[endpoint]
    (variant,) = bench_cpu.variants([key], endpoint=family, middleware=Scaled)
    return variant.app


async def _child(key: str, endpoint: str, requests: int, warmup: int, watch_delay: float) -> None:
    asyncio.get_running_loop().set_task_factory(bench_cpu._TaskCounter())  # type: ignore[arg-type]
    app = _app(key, endpoint, watch_delay)
    await bench_cpu._batch(app, warmup, 1)
    if requests:
        await bench_cpu._batch(app, requests, 1)


def count(key: str, requests: int, args: argparse.Namespace, candidate: str | None = None) -> int:
    """Instructions callgrind counted for one child process running ``requests`` requests."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if candidate is not None:
        env["PYTHONPATH"] = candidate
    watch_delay = DEFAULT_WATCH_DELAY * args.time_scale
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(HERE),
        "--child",
        key,
        "--requests",
        str(requests),
        "--warmup",
        str(args.warmup),
        "--endpoint",
        args.endpoint,
        "--watch-delay",
        repr(watch_delay),
        "--expect-package",
        candidate or "",
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=args.timeout)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{key}: callgrind run failed:\n{done.stderr[-3000:]}")
    return int(found.group(1))


def measure(args: argparse.Namespace) -> dict[str, int]:
    """Instructions per request of each variant (and each candidate's (b*N), (c*N)), rounded
    here, so that a difference printed is the difference of the figures printed."""
    runs: list[tuple[str, str, str | None]] = [(key, key, None) for key in args.only]
    for number, folder in enumerate(args.candidate, 1):
        runs += [(f"{key}*{number}", key, folder) for key in SCALED_KEYS if key in args.only]
    low, high = args.requests, 3 * args.requests
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            (name, n): pool.submit(count, key, n, args, folder)
            for name, key, folder in runs
            for n in (low, high)
        }
        return {
            name: round((futures[name, high].result() - futures[name, low].result()) / (high - low))
            for name, _, _ in runs
        }


def report(args: argparse.Namespace, found: dict[str, int]) -> str:
    labels = {variant.key: variant.label for variant in bench_cpu.variants(None)}
    rows = []
    for name, value in found.items():
        key, _, number = name.partition("*")
        label = labels[key] if not number else f"({name}) as ({key}), candidate {number}'s package"
        rows.append((label, f"{value:,.0f}"))
    pairs = [("(b)-(h) unused over the floor", "b", "h"), ("(c)-(h') observed", "c", "h'")]
    for number in range(1, len(args.candidate) + 1):
        pairs += [
            (f"candidate {number}: (b*{number})-(h)", f"b*{number}", "h"),
            (f"candidate {number}: (c*{number})-(h')", f"c*{number}", "h'"),
            (f"this tree over candidate {number}, unused, (b)-(b*{number})", "b", f"b*{number}"),
            (f"this tree over candidate {number}, observed, (c)-(c*{number})", "c", f"c*{number}"),
        ]
    differences = [
        (name, f"{found[a] - found[b]:+,.0f}", f"{found[b] / found[a]:.3f}")
        for name, a, b in pairs
        if a in found and b in found
    ]
    candidates = "".join(
        f" Candidate {n}: `request_aborted` from `{folder}`."
        for n, folder in enumerate(args.candidate, 1)
    )
    return "\n".join(
        [
            "## Instructions per request, in-process (`bench/bench_instructions.py`)",
            "",
            f"reproduce: `{command_line()}`",
            "",
            f"{environment('starlette', 'uvloop', pinned=False)}; endpoint {args.endpoint}; "
            f"{args.requests} and {3 * args.requests} requests per child after {args.warmup}; "
            f"watch_delay scaled by {args.time_scale:g}.{candidates}",
            "",
            table(("variant", "instructions/request"), rows),
            "",
            table(
                ("difference", "instructions/request", "subtrahend/minuend (as a rate ratio)"),
                differences,
            ),
            "",
        ]
    )


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="h,b,h',c", help="comma-separated variant keys")
    parser.add_argument("--requests", type=int, default=500, help="requests in the shorter run")
    parser.add_argument("--warmup", type=int, default=300, help="requests before the counted part")
    parser.add_argument("--endpoint", choices=sorted(bench_cpu.ENDPOINTS), default="plaintext")
    parser.add_argument(
        "--time-scale", type=float, default=50.0, help="watch_delay multiplier (default 50)"
    )
    parser.add_argument(
        "--candidate", action="append", default=[], help="a folder holding another request_aborted/"
    )
    parser.add_argument("--jobs", type=int, default=2, help="callgrind processes at once")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--watch-delay", type=float, default=DEFAULT_WATCH_DELAY, help=argparse.SUPPRESS
    )
    parser.add_argument("--expect-package", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.only = [key for key in args.only.split(",") if key]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    if args.child:
        import request_aborted

        where = Path(request_aborted.__file__ or "").resolve()
        if args.expect_package and Path(args.expect_package).resolve() not in where.parents:
            raise SystemExit(f"request_aborted imported from {where}, not {args.expect_package}")
        import uvloop

        uvloop.run(_child(args.child, args.endpoint, args.requests, args.warmup, args.watch_delay))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    bench_cpu.variants(args.only)  # refuses unknown keys before any child starts
    print(report(args, measure(args)))


if __name__ == "__main__":
    main()
