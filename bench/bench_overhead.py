"""Throughput cost of RequestAbortedMiddleware under uvicorn, as ratios to bare Starlette.

Every variant runs in its own uvicorn process (httptools, uvloop, one worker, no access log), all
started at once and pinned to one core while wrk runs on the other. Two measurements, both ratios
of variants measured side by side:

* **Interleaved** (``--rounds``): each round runs wrk against every (variant, endpoint) in turn,
  A B C D A B C D..., so a noisy moment hurts all variants alike; the ratio to the baseline is
  computed within each round and the median over rounds is reported.
* **Paired** (``--paired-rounds``): a variant and its baseline are loaded *at the same time*, two
  wrk processes against two servers that share the server core. The scheduler gives each server
  half the core, so the ratio of their request rates is the ratio of their CPU cost per request,
  and whatever slows the machine down during those seconds slows both alike. On this shared
  virtual machine (whose stolen time is charged to whatever runs, so not even CPU time per request
  is steady) it is the steadier measure: two identical bare servers paired this way read
  0.98-1.03, where interleaved runs of 5 s each can differ by 2x.

Variants (``bench/apps.py``):

* (a) bare Starlette; (a+sleep) the same with ``await asyncio.sleep(0)`` in the handler
* (b) with ``RequestAbortedMiddleware``, endpoint ignoring the token       -> target b/a >= 0.95
* (c) with the middleware, endpoint awaiting ``sleep(0)`` inside ``token.scope()``
                                                                      -> target c/(a+sleep) >= 0.90
* (c') as (c), with the middleware's ``watch_delay=0``: a watcher task starts the moment the
  handler first looks at its token (by default, only if it still runs 1 ms later)
* (f) no middleware: the bare app's handler awaits ``sleep(0)`` inside ``asyncio.timeout(30)``,
  the standard library's nearest equivalent of (c)'s scope; what such a block costs by itself
* (g) no middleware: the await inside an ``async with`` whose ``__aenter__``/``__aexit__`` do
  nothing, what the block syntax itself costs
* (h) the floor: ``_Floor``, the least per-request work the criteria demand of any middleware
  (token in the scope, context variable, ``receive``/``send`` wrappers), token unused; (h') the
  floor with the handler's ``sleep(0)`` inside an ``async with`` that does nothing, the least any
  (c) can cost; (h'') the same with a plain ``with`` (a scope could be a synchronous context
  manager, as anyio's ``CancelScope`` is); (b-h) the middleware paired with the floor directly,
  which measures the part of (b) that is ours rather than any conforming middleware's (issue 17:
  >= 0.98); (c-h') the middleware's (c) paired with (h') directly (issue 17: >= 0.93)
* (d) fastapi-disconnect's ``CancelOnDisconnectMiddleware``: it needs Python >= 3.12, so it runs
  only with ``--fd-python`` (an interpreter that has it), against a bare app on that interpreter
* (e) a no-op ``BaseHTTPMiddleware``, the reference point most Starlette users know
* (b*N) and (c*N) with ``--candidate DIR`` (repeatable): (b) and (c) again, importing
  ``request_aborted`` from ``DIR`` (a modified copy of the package, or an older commit's:
  ``git archive COMMIT middleware/request_aborted | tar -x -C DIR``), interleaved with the
  originals; (b/b*N) and (c/c*N) pair this tree's (b) and (c) with the candidate's directly

Reproduce with::

    .venv/bin/python bench/bench_overhead.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _util import (
    Server,
    command_line,
    environment,
    free_port,
    median,
    pin_self,
    table,
    uvicorn_argv,
    write_section,
    wrk_together,
)

SECTION = "bench_overhead"
ENDPOINTS = ("plaintext", "json")

FD_NOT_RUN = (
    "not run: fastapi-disconnect (0.4.0, and 0.1.0, the only other release) declares "
    "`Requires-Python >=3.12` and uses PEP 695 syntax (`type OnDisconnect = ...`, "
    "`def cancel_on_disconnect[**P, R](...)`). Installed with `pip install "
    "--ignore-requires-python fastapi-disconnect` into a venv of this Python 3.11, "
    "`import fastapi_disconnect` fails with `SyntaxError: invalid syntax` (line 29). "
    "Pass `--fd-python` (a Python >= 3.12 with it installed) to measure it against a bare "
    "app on that interpreter; (e) stands in as the reference point."
)


@dataclass
class Spec:
    """How to start one server: which factory of bench/apps.py, on which Python."""

    factory: str
    python: str = sys.executable
    pythonpath: tuple[str, ...] = ()


@dataclass
class Variant:
    key: str
    label: str
    server: str
    path: str  # "{endpoint}" is replaced by plaintext or json
    baseline: str | None = None  # key of the variant this one is compared with
    target: float | None = None
    rps: dict[str, list[float]] = field(default_factory=dict)  # alone, one per round
    paired: dict[str, list[float]] = field(default_factory=dict)  # rps / baseline's, together


def variants(args: argparse.Namespace) -> list[Variant]:
    found = [
        Variant("a", "(a) bare Starlette", "bare", "/{endpoint}"),
        Variant("b", "(b) + middleware, token unused", "middleware", "/{endpoint}", "a", 0.95),
        Variant(
            "h",
            "(h) + the floor: the least any middleware meeting the criteria does, for reference",
            "floor",
            "/{endpoint}",
            "a",
        ),
        Variant(
            "b-h",
            "(b-h) the middleware against the floor (h), paired directly: our own share",
            "middleware",
            "/{endpoint}",
            "h",
            0.98,  # issue 17
        ),
        Variant("e", "(e) + no-op BaseHTTPMiddleware", "base_http", "/{endpoint}", "a"),
        Variant("a+sleep", "(a+sleep) bare, handler awaits sleep(0)", "bare", "/{endpoint}-sleep"),
        Variant(
            "g",
            "(g) bare, sleep(0) inside an `async with` that does nothing, for reference",
            "bare_again",
            "/{endpoint}-nothing",
            "a+sleep",
        ),
        Variant(
            "f",
            "(f) bare, sleep(0) inside asyncio.timeout(30): no middleware, for reference",
            "bare_again",
            "/{endpoint}-timeout",
            "a+sleep",
        ),
        Variant(
            "h'",
            "(h') + the floor, sleep(0) inside an `async with` that does nothing: the least any "
            "(c) can cost, for reference",
            "floor",
            "/{endpoint}-nothing",
            "a+sleep",
        ),
        Variant(
            "h''",
            "(h'') as (h'), with a plain `with` that does nothing instead, for reference",
            "floor",
            "/{endpoint}-with",
            "a+sleep",
        ),
        Variant(
            "c",
            "(c) + middleware, sleep(0) inside token.scope()",
            "middleware",
            "/{endpoint}-token",
            "a+sleep",
            0.90,
        ),
        Variant(
            "c-h'",
            "(c-h') the middleware's (c) against the floor's (h'), paired directly: what observing "
            "costs over the least any (c) can cost",
            "middleware",
            "/{endpoint}-token",
            "h'",
            0.93,  # issue 17
        ),
        Variant(
            "c'",
            "(c') as (c), middleware with `watch_delay=0` (a watcher at once)",
            "middleware_eager",
            "/{endpoint}-token",
            "a+sleep",
        ),
    ]
    for n, _ in enumerate(args.candidate, 1):
        found.insert(
            1 + n,
            Variant(f"b*{n}", f"(b*{n}) candidate {n}, token unused", f"candidate{n}",
                    "/{endpoint}", "a"),
        )  # fmt: skip
        found.append(
            Variant(f"c*{n}", f"(c*{n}) candidate {n}, token.scope()", f"candidate{n}",
                    "/{endpoint}-token", "a+sleep"),
        )  # fmt: skip
        # This tree against the candidate directly, loaded together: before/after in one ratio.
        found += [
            Variant(f"b/b*{n}", f"(b/b*{n}) this tree over candidate {n}, token unused",
                    "middleware", "/{endpoint}", f"b*{n}"),
            Variant(f"c/c*{n}", f"(c/c*{n}) this tree over candidate {n}, token.scope()",
                    "middleware", "/{endpoint}-token", f"c*{n}"),
        ]  # fmt: skip
    if args.fd_python:
        found += [
            Variant("a'", "(a') bare Starlette on --fd-python", "bare_fd", "/{endpoint}"),
            Variant("d", "(d) + fastapi-disconnect middleware", "fd", "/{endpoint}", "a'"),
        ]
    if args.only:
        keep = set(args.only.split(","))
        found = [variant for variant in found if variant.key in keep]
    return found


def servers_for(args: argparse.Namespace) -> dict[str, Spec]:
    specs = {
        "bare": Spec("bare"),
        # The same app in a second process: a paired ratio needs two processes sharing the core
        # (two paths of one process would just be served turn about, at a ratio of 1).
        "bare_again": Spec("bare"),
        "middleware": Spec("middleware"),
        "middleware_eager": Spec("middleware_eager"),
        "base_http": Spec("base_http"),
        "floor": Spec("floor"),
        "bare_fd": Spec("bare", python=args.fd_python),
        "fd": Spec("fastapi_disconnect", python=args.fd_python),
    }
    for n, folder in enumerate(args.candidate, 1):
        specs[f"candidate{n}"] = Spec("middleware", pythonpath=(str(folder),))
    return specs


def probe(python: str, code: str) -> str:
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{python} -c {code!r} failed:\n{done.stderr}")
    return done.stdout.strip()


def run(args: argparse.Namespace) -> list[Variant]:
    pin_self()
    chosen = variants(args)
    by_key = {variant.key: variant for variant in chosen}
    specs = servers_for(args)
    servers: dict[str, Server] = {}
    try:
        for name in sorted({variant.server for variant in chosen}):
            spec = specs[name]
            port = free_port()
            argv = uvicorn_argv(spec.factory, port, python=spec.python)
            servers[name] = Server(name, argv, port, "/plaintext", pythonpath=spec.pythonpath)
            servers[name].start()

        def url(variant: Variant, endpoint: str) -> str:
            return servers[variant.server].url(variant.path.format(endpoint=endpoint))

        def load(*urls: str, seconds: float) -> list[float]:
            results = wrk_together(urls, seconds=seconds, connections=args.connections)
            for target, result in zip(urls, results, strict=True):
                if result.errors:
                    raise RuntimeError(f"{result.errors} errors from {target}")
            return [result.rps for result in results]

        started = time.monotonic()

        def progress(what: str) -> None:
            elapsed = time.monotonic() - started
            print(f"{what} done after {elapsed:.0f}s", file=sys.stderr)

        for endpoint in args.endpoints:  # warm every server and path once, not counted
            for variant in chosen:
                load(url(variant, endpoint), seconds=1)
        for round_ in range(args.rounds):
            for endpoint in args.endpoints:
                for variant in chosen:
                    (rps,) = load(url(variant, endpoint), seconds=args.seconds)
                    variant.rps.setdefault(endpoint, []).append(rps)
            progress(f"interleaved round {round_ + 1}/{args.rounds}")
        for round_ in range(args.paired_rounds):
            for endpoint in args.endpoints:
                for variant in chosen:
                    if variant.baseline is None:
                        continue
                    base = by_key[variant.baseline]
                    pair = [url(base, endpoint), url(variant, endpoint)]
                    if round_ % 2:  # alternate which wrk starts first
                        theirs, mine = reversed(load(*reversed(pair), seconds=args.seconds))
                    else:
                        theirs, mine = load(*pair, seconds=args.seconds)
                    variant.paired.setdefault(endpoint, []).append(mine / theirs)
            progress(f"paired round {round_ + 1}/{args.paired_rounds}")
    finally:
        for server in servers.values():
            server.stop()
    return chosen


def ratio_text(values: Sequence[float]) -> tuple[str, str]:
    if not values:
        return "", ""
    return f"**{median(values):.3f}**", f"{min(values):.2f}-{max(values):.2f}"


def report(args: argparse.Namespace, chosen: Sequence[Variant]) -> str:
    by_key = {variant.key: variant for variant in chosen}
    rows = []
    for endpoint in args.endpoints:
        for variant in chosen:
            rps = median(variant.rps[endpoint]) if args.rounds else float("nan")
            interleaved = paired = ("", "")
            verdict = baseline = ""
            if variant.baseline is not None:
                baseline = variant.baseline
                base = by_key[variant.baseline].rps.get(endpoint, [])
                ratios = [m / t for m, t in zip(variant.rps.get(endpoint, []), base, strict=True)]
                interleaved = ratio_text(ratios)
                paired = ratio_text(variant.paired.get(endpoint, []))
                decisive = variant.paired.get(endpoint) or ratios
                if variant.target is not None:
                    met = median(decisive) >= variant.target
                    verdict = f">= {variant.target:.2f}: {'met' if met else '**missed**'}"
            rows.append(
                (f"`/{endpoint}`", variant.label, f"{rps:,.0f}", baseline, *paired,
                 *interleaved, verdict)
            )  # fmt: skip
        if not args.fd_python and not args.only:
            rows.append((f"`/{endpoint}`", "(d) + fastapi-disconnect middleware",
                         "not run", "", "", "", "", "", "see (d) below"))  # fmt: skip
    header = (
        "endpoint",
        "variant",
        "req/s alone",
        "vs",
        "paired ratio",
        "paired range",
        "interleaved ratio",
        "interleaved range",
        "target (paired)",
    )
    lines = [
        "## Throughput: "
        + ("against fastapi-disconnect on Python 3.12" if args.fd_python else "middleware overhead")
        + " (`bench/bench_overhead.py`)",
        "",
        f"reproduce: `{command_line()}`",
        "",
        f"{environment('starlette', 'uvicorn', 'httptools', 'uvloop')}.",
        "",
        "uvicorn `--http httptools --loop uvloop --workers 1 --no-access-log --log-level "
        f"warning`, one process per variant, all on one core; `wrk -t1 -c{args.connections} "
        f"-d{args.seconds:g}s` per measurement on the other core, after a 1 s warm-up pass. "
        f"*req/s alone*: median over {args.rounds} interleaved rounds (A B C D A B C D...) of "
        "the variant loaded by itself. *interleaved ratio*: median over those rounds of the "
        "variant's req/s over its baseline's in the same round. *paired ratio*: median over "
        f"{args.paired_rounds} rounds in which the variant and its baseline were loaded at the "
        "same time, sharing the server core: the ratio of their CPU cost per request, immune to "
        "the machine slowing down (two identical servers read 0.98-1.03 this way). The ranges "
        "are the lowest and highest round. Targets are judged on the paired ratio.",
        "",
        table(header, rows),
        "",
    ]
    if args.fd_python:
        versions = probe(
            args.fd_python,
            "import sys; from importlib.metadata import version; "
            "print('Python', sys.version.split()[0] + ', fastapi-disconnect', "
            "version('fastapi-disconnect'))",
        )
        lines += [
            f"(a') and (d) ran on `{args.fd_python}` ({versions}): compare (d) with (a'). "
            "That interpreter came from `python3.12 -m venv /tmp/fd312venv && "
            "/tmp/fd312venv/bin/pip install 'uvicorn[standard]==0.54.0' starlette==1.10.0 "
            "fastapi-disconnect==0.4.0`; on this Python 3.11 fastapi-disconnect does not import "
            "(PEP 695 syntax, `SyntaxError`).",
            "",
        ]
    elif not args.only:
        lines += [f"(d) {FD_NOT_RUN}", ""]
    for n, folder in enumerate(args.candidate, 1):
        lines += [f"Candidate {n} imported `request_aborted` from `{folder}`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--paired-rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--fd-python",
        help="a Python >= 3.12 with uvicorn[standard] and fastapi-disconnect: adds (a') and (d)",
    )
    parser.add_argument(
        "--candidate",
        type=Path,
        action="append",
        default=[],
        help="a folder holding a modified request_aborted package: adds (b*N) and (c*N)",
    )
    parser.add_argument("--only", help="comma-separated variant keys to run (a,b,c,e,...)")
    parser.add_argument(
        "--endpoints",
        type=lambda text: tuple(text.split(",")),
        default=ENDPOINTS,
        help="comma-separated: plaintext,json",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave bench/results alone"
    )
    args = parser.parse_args()
    section = report(args, run(args))
    print(section)
    if not args.no_write:
        suffix = "-fd" if args.fd_python else ""
        write_section(SECTION + suffix + ("-candidate" if args.candidate else ""), section)


if __name__ == "__main__":
    main()
