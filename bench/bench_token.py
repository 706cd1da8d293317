"""What a token costs: creating a source, linking one, and entering/leaving ``token.scope()``.

The scope is compared, in the same process and the same event loop, with the two cancel scopes
Python users already pay for: ``asyncio.timeout()`` and ``anyio.CancelScope()``. Each case runs
``--iterations`` times per repeat and the best of ``--repeats`` repeats is reported (the minimum is
the least disturbed by the rest of the machine). The ratio column compares each scope with
``asyncio.timeout()`` around the same body; the target is a ``token.scope()`` within 2x of it.

Reproduce with::

    .venv/bin/python bench/bench_token.py
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version

import anyio

from request_aborted import CancellationToken, CancellationTokenSource

COMMAND = ".venv/bin/python bench/bench_token.py"


def time_sync(body: Callable[[int], None], iterations: int, repeats: int) -> float:
    """Best ns/op of ``body(iterations)`` over ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter_ns()
        body(iterations)
        best = min(best, (time.perf_counter_ns() - start) / iterations)
    return best


async def time_async(
    body: Callable[[int], Awaitable[None]], iterations: int, repeats: int
) -> float:
    """Best ns/op of ``await body(iterations)`` over ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter_ns()
        await body(iterations)
        best = min(best, (time.perf_counter_ns() - start) / iterations)
    return best


# -- source creation and linking (plain functions: no event loop involved) ------------------------


def create_source(n: int) -> None:
    for _ in range(n):
        CancellationTokenSource()


def create_and_close_source(n: int) -> None:
    for _ in range(n):
        with CancellationTokenSource():
            pass


def link_and_close(parent: CancellationToken) -> Callable[[int], None]:
    def body(n: int) -> None:
        linked = CancellationTokenSource.linked
        for _ in range(n):
            with linked(parent):
                pass

    return body


def register_and_unregister(token: CancellationToken) -> Callable[[int], None]:
    def callback(reason: BaseException) -> None:
        pass

    def body(n: int) -> None:
        register = token.register
        for _ in range(n):
            register(callback).unregister()

    return body


# -- scopes around nothing and around one ``await asyncio.sleep(0)`` -----------------------------


async def loop_only(n: int) -> None:
    for _ in range(n):
        pass


async def sleep_only(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def token_scope(token: CancellationToken, sleep: bool) -> Callable[[int], Awaitable[None]]:
    async def empty(n: int) -> None:
        for _ in range(n):
            async with token.scope():
                pass

    async def around_sleep(n: int) -> None:
        for _ in range(n):
            async with token.scope():
                await asyncio.sleep(0)

    return around_sleep if sleep else empty


def asyncio_timeout(delay: float | None, sleep: bool) -> Callable[[int], Awaitable[None]]:
    async def empty(n: int) -> None:
        for _ in range(n):
            async with asyncio.timeout(delay):  # noqa: ASYNC100 - the cost of an empty block
                pass

    async def around_sleep(n: int) -> None:
        for _ in range(n):
            async with asyncio.timeout(delay):
                await asyncio.sleep(0)

    return around_sleep if sleep else empty


def anyio_scope(sleep: bool) -> Callable[[int], Awaitable[None]]:
    async def empty(n: int) -> None:
        for _ in range(n):
            with anyio.CancelScope():  # noqa: ASYNC100 - the cost of an empty block
                pass

    async def around_sleep(n: int) -> None:
        for _ in range(n):
            with anyio.CancelScope():
                await asyncio.sleep(0)

    return around_sleep if sleep else empty


async def measure(iterations: int, repeats: int) -> list[tuple[str, float, str]]:
    """Rows of (case, ns/op, ratio text)."""
    rows: list[tuple[str, float, str]] = []
    parent = CancellationTokenSource()
    for name, body in (
        ("CancellationTokenSource()", create_source),
        ("CancellationTokenSource() + close()", create_and_close_source),
        ("linked(parent) + close()", link_and_close(parent.token)),
        ("token.register(cb).unregister()", register_and_unregister(parent.token)),
    ):
        rows.append((name, time_sync(body, iterations, repeats), ""))
    assert parent.registrations == 0

    for sleep, label in ((False, "around nothing"), (True, "around await sleep(0)")):
        bare = sleep_only if sleep else loop_only
        baseline = await time_async(bare, iterations, repeats)
        cases = {
            "asyncio.timeout(None)": asyncio_timeout(None, sleep),
            "asyncio.timeout(60)": asyncio_timeout(60.0, sleep),
            "anyio.CancelScope()": anyio_scope(sleep),
            "token.scope()": token_scope(parent.token, sleep),
            "CancellationToken.NONE.scope()": token_scope(CancellationToken.NONE, sleep),
        }
        # Interleave the cases repeat by repeat so a noisy moment hurts all of them alike.
        best = dict.fromkeys(cases, float("inf"))
        for _ in range(repeats):
            for case, scope_body in cases.items():
                best[case] = min(best[case], await time_async(scope_body, iterations, 1))
        reference = best["asyncio.timeout(None)"] - baseline
        rows.append((f"(bare loop {label})", baseline, ""))
        for case, ns in best.items():
            net = ns - baseline
            rows.append((f"{case} {label}", ns, f"{net / reference:.2f}x (net {net:.0f} ns)"))
    assert parent.registrations == 0
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    rows = asyncio.run(measure(args.iterations, args.repeats))
    print(f"# {COMMAND} --iterations {args.iterations} --repeats {args.repeats}")
    print(
        f"# Python {platform.python_version()} ({sys.implementation.name}), "
        f"anyio {version('anyio')}, "
        f"{platform.machine()}; best of {args.repeats} x {args.iterations} iterations"
    )
    print("# ratio: ns/op minus the bare loop, relative to asyncio.timeout(None) (same body)")
    width = max(len(name) for name, _, _ in rows)
    print(f"{'case':<{width}}  {'ns/op':>9}  ratio vs asyncio.timeout")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 24}")
    for name, ns, ratio in rows:
        print(f"{name:<{width}}  {ns:>9.1f}  {ratio}")


if __name__ == "__main__":
    main()
