"""Latency from a client closing its socket to the request's token firing, on real servers.

For each request the client (pinned to one core) opens a connection, sends the request, waits until
the handler is inside ``token.scope()``, reads ``time.monotonic()`` and closes the socket. The
server (pinned to the other core) records, in a ``token.register`` callback, when the token fired,
and in the handler's ``finally`` when the interrupted handler stopped. ``CLOCK_MONOTONIC`` is
system-wide, so both sides' readings are on one clock; the client collects the server's from
``/records`` at the end.

* ``before response``: the handler awaits inside ``token.scope()`` before sending anything; the
  client closes ``--settle`` seconds after sending the request.
* ``mid-stream``: the response started (one chunk sent) and the handler awaits inside the scope;
  the client closes as soon as it has read that chunk.

A control runs interleaved with the token requests, one for one on the same server: a bare ASGI
handler, in front of Starlette and the middleware, awaiting ``receive()`` until the server reports
``http.disconnect``. It is the server's own latency (and the machine's scheduling delays), which
no middleware can beat; the difference between the two is what the middleware adds.

Under uvicorn the server runs ``_seen``'s protocols (uvicorn's own, noting in ``connection_lost``
when the server process saw the close), so each request also has *seen -> fired*: both timestamps
taken inside the server process, on its one clock, free of the client's scheduling; *close ->
seen* is the kernel's and the event loop's part.

``--load``: the same measurement while the server is under the throughput benchmark's load, ``wrk
-t1 -c16`` on ``/plaintext-token`` (the (c) endpoint: ``sleep(0)`` inside ``token.scope()``) on
127.0.0.1, running all the while and stopped when the samples are in (``--load-seconds`` bounds
it). wrk shares the client core with this script; the server has the other core. Only uvicorn
with httptools by default (the throughput run's server; ``--servers`` picks others). Not under
SCHED_FIFO: a real-time server at full load would take its core from everything else on the
machine.

Target: token p99 <= 2 ms on loopback (issue 17: under the throughput run's load too).

Reproduce with::

    .venv/bin/python bench/bench_disconnect_latency.py --realtime 10   # idle, SCHED_FIFO
    .venv/bin/python bench/bench_disconnect_latency.py --load           # under wrk -c16
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from _util import (
    CLIENT_CPU,
    Server,
    WrkResult,
    command_line,
    environment,
    free_port,
    get,
    get_json,
    hypercorn_argv,
    median,
    percentile,
    pin_self,
    pinned,
    table,
    uvicorn_argv,
    write_section,
)

SECTION = "bench_disconnect_latency"
TARGET_P99_MS = 2.0
MODES = ("before response", "mid-stream")
PATHS = {  # (mode, control?) -> path prefix
    ("before response", False): "/wait/",
    ("mid-stream", False): "/stream/",
    ("before response", True): "/raw-wait/",
    ("mid-stream", True): "/raw-stream/",
}


@dataclass
class Samples:
    fired: list[float] = field(default_factory=list)  # ms from the client's close
    stopped: list[float] = field(default_factory=list)
    seen: list[float] = field(default_factory=list)  # ms from the client's close to the server's
    seen_fired: list[float] = field(default_factory=list)  # ms from the server's seen to fired
    not_counted: int = 0  # closed before the handler waited, or never fired


@dataclass
class Load:
    """The wrk run a ``--load`` measurement took place under."""

    server: str
    connections: int
    path: str
    result: WrkResult | None = None
    load_average: tuple[float, float] = (0.0, 0.0)  # 1-minute, at the start and at the end


@dataclass
class Outcome:
    server: str
    mode: str
    token: Samples
    control: Samples
    load: Load | None = None  # the wrk run it was measured under, if any


SERVERS: dict[str, Callable[[int], list[str]]] = {
    "uvicorn h11": lambda port: uvicorn_argv("latency", port, http="_seen:H11Seen"),
    "uvicorn httptools": lambda port: uvicorn_argv("latency", port, http="_seen:HttpToolsSeen"),
    "hypercorn": lambda port: hypercorn_argv("latency", port),
}
LOAD_PATHS = {  # what wrk may load, and what it is in bench_overhead.py's terms
    "/plaintext-token": "the (c) endpoint, `sleep(0)` inside `token.scope()`",
    "/plaintext": "the (b) endpoint, token unused",
}


def one_request(port: int, path: str, mode: str, settle: float) -> float:
    """Open, send, wait until the handler waits, close; return the close time."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        if mode == "mid-stream":
            received = b""
            while b"ready" not in received:
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError(f"{path}: connection closed before the first chunk")
                received += chunk
        else:
            time.sleep(settle)
        closed = time.monotonic()
    finally:
        sock.close()
    return closed


def measure(
    name: str, port: int, mode: str, count: int, settle: float, deadline: float = float("inf")
) -> Outcome:
    """``count`` token requests and as many controls, fewer if ``deadline`` (monotonic) passes."""
    closes: dict[tuple[bool, str], float] = {}
    for n in range(count):
        if time.monotonic() > deadline:
            break
        for control in (False, True):  # one token request, one control, alternately
            key = f"{n}-{time.monotonic_ns()}"
            closes[control, key] = one_request(port, PATHS[mode, control] + key, mode, settle)
            time.sleep(0.002)  # let the server finish with this one before the next arrives
    time.sleep(0.2)
    records: dict[str, list[float | None]] = get_json(f"http://127.0.0.1:{port}/records")
    outcome = Outcome(name, mode, Samples(), Samples())
    for (control, key), closed in closes.items():
        samples = outcome.control if control else outcome.token
        entered, fired, stopped, seen = records.get(key, (None, None, None, None))
        if entered is None or entered > closed or fired is None:
            samples.not_counted += 1
            continue
        samples.fired.append((fired - closed) * 1e3)
        if stopped is not None:
            samples.stopped.append((stopped - closed) * 1e3)
        if seen is not None:
            samples.seen.append((seen - closed) * 1e3)
            samples.seen_fired.append((fired - seen) * 1e3)
    return outcome


def ms(values: Sequence[float], fraction: float | None = None) -> str:
    if not values:
        return "-"
    value = median(values) if fraction is None else percentile(values, fraction)
    return f"{value:.3f}"


def report(args: argparse.Namespace, outcomes: list[Outcome]) -> str:
    rows = []
    for outcome in outcomes:
        token, control = outcome.token, outcome.control
        p99 = percentile(token.fired, 0.99) if token.fired else float("inf")
        verdict = "met" if p99 <= TARGET_P99_MS else "**missed**"
        added = median(token.fired) - median(control.fired) if control.fired else float("nan")
        load = outcome.load
        rows.append(
            (
                outcome.server,
                *((f"wrk -c{load.connections}" if load else "none",) if args.load else ()),
                outcome.mode,
                len(token.fired),
                ms(control.fired),
                ms(control.fired, 0.99),
                ms(token.fired),
                f"**{ms(token.fired, 0.99)}**",
                ms(token.fired, 1.0),
                f"{added:+.3f}",
                ms(token.seen),
                ms(control.seen_fired),
                ms(control.seen_fired, 0.99),
                ms(token.seen_fired),
                ms(token.seen_fired, 0.99),
                ms(token.stopped),
                ms(token.stopped, 0.99),
                token.not_counted + control.not_counted,
                f"<= {TARGET_P99_MS:g}: {verdict}",
            )
        )
    header = (
        "server",
        *(("load",) if args.load else ()),
        "client closed",
        "samples",
        "control p50",
        "control p99",
        "token p50",
        "token p99",
        "token max",
        "added p50",
        "close to seen p50",
        "control seen to fired p50",
        "control seen to fired p99",
        "seen to fired p50",
        "seen to fired p99",
        "stopped p50",
        "stopped p99",
        "not counted",
        "target (token p99)",
    )
    realtime = (
        f" Server and client ran under `chrt -f {args.realtime}` (SCHED_FIFO), so that the "
        "other work on this machine cannot delay them."
        if args.realtime
        else ""
    )
    loads = {id(o.load): o.load for o in outcomes if o.load is not None and o.load.result}
    loaded = "".join(
        f" **Under load** ({load.server}): all the while `wrk -t1 -c{load.connections}` loaded "
        f"`{load.path}` ({LOAD_PATHS[load.path]}) on the same "
        f"server: {load.result.requests} requests in {load.result.seconds:.1f} s, "
        f"{load.result.rps:.0f} req/s, {load.result.errors} errors; wrk and this client "
        "shared the client core. Load average (1 min) on the machine "
        f"{load.load_average[0]:.1f} at its start, {load.load_average[1]:.1f} at its end "
        "(other work on the machine included). *none*: the same server just before, idle "
        "but for this client."
        for load in loads.values()
        if load.result is not None
    )
    title = "## Disconnect latency: client close to token firing"
    if args.realtime:
        title += ", SCHED_FIFO"
    if args.load:
        title += f", idle and under wrk -c{args.load_connections} load"
    return "\n".join(
        [
            title + " (`bench/bench_disconnect_latency.py`)",
            "",
            f"reproduce: `{command_line()}`",
            "",
            f"{environment('starlette', 'uvicorn', 'httptools', 'uvloop', 'h11', 'hypercorn')}.",
            "",
            f"All times in ms from the client's `time.monotonic()` just before `close()`, except "
            "*seen to fired*. Up to "
            f"{args.requests} token requests per row, one at a time, each on a new connection, "
            "alternating one for one with the control. *token*: when the `token.register` "
            "callback ran; *stopped*: when the interrupted handler's `finally` ran; *control*: "
            "when a bare ASGI handler in front of the middleware got `http.disconnect` from the "
            "server (the floor); *added p50*: token p50 minus control p50; *seen*: when uvicorn's "
            "`connection_lost` ran for the request's connection (`bench/_seen.py`; '-' under "
            "hypercorn), so *seen to fired* has both ends in the server process on its "
            "`CLOCK_MONOTONIC` (for the control: seen to `http.disconnect` received). "
            "*before response*: "
            f"the client closes {args.settle * 1e3:g} ms after sending the request, the handler "
            "waiting in `token.scope()` before it sent anything; *mid-stream*: the client closes "
            "as soon as it has read the first chunk of a streaming response whose generator "
            "then waits in `token.scope()`. uvicorn runs `--loop uvloop`, hypercorn its asyncio "
            f"worker. *not counted*: closed before the handler waited, or never fired.{realtime}"
            f"{loaded}",
            "",
            table(header, rows),
            "",
        ]
    )


def start_load(port: int, load: Load, seconds: float) -> subprocess.Popen[str]:
    """wrk on the client core against ``load.path``, for at most ``seconds``."""
    argv = ["wrk", "-t1", f"-c{load.connections}", f"-d{seconds:g}s", "--timeout", "5s"]
    argv.append(f"http://127.0.0.1:{port}{load.path}")
    return subprocess.Popen(
        pinned(CLIENT_CPU, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stop_load(process: subprocess.Popen[str]) -> WrkResult:
    """Stop wrk (SIGINT: it prints its summary) and read what it did."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        stdout, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, _ = process.communicate()
    return WrkResult.parse(stdout)


def run_server(args: argparse.Namespace, name: str, argv: list[str], port: int) -> list[Outcome]:
    """Both modes on one server; with ``--load``, idle first, then again under wrk's load."""
    outcomes = []
    with Server(name.replace(" ", "-"), argv, port, "/plaintext") as server:
        for _ in range(20):  # warm up the server's code paths
            get(server.url("/plaintext"))
        for load in (
            [None, Load(name, args.load_connections, args.load_path)] if args.load else [None]
        ):
            wrk = None
            deadline = float("inf")
            if load is not None:
                load.load_average = (os.getloadavg()[0], 0.0)
                wrk = start_load(port, load, args.load_seconds)
                deadline = time.monotonic() + args.load_seconds - 1.0
                time.sleep(1.0)  # wrk connected and the server busy before the first sample
            try:
                for mode in MODES:
                    warmup = min(20, args.requests)  # not counted
                    measure(name, port, mode, warmup, args.settle, deadline)
                    outcome = measure(name, port, mode, args.requests, args.settle, deadline)
                    outcome.load = load
                    outcomes.append(outcome)
                    print(f"{name} / {mode} / {load and 'loaded'}: done", file=sys.stderr)
            finally:
                if wrk is not None:
                    assert load is not None
                    load.result = stop_load(wrk)
                    load.load_average = (load.load_average[0], os.getloadavg()[0])
            if load is not None and load.result is not None and load.result.requests == 0:
                raise RuntimeError("wrk made no requests: the measurement was not under load")
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, help="per server and mode (default 500; with --load 300)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        help="seconds between request and close, before response (default 0.01; with --load "
        "0.05, time for the request to reach its handler on the busy server)",
    )
    parser.add_argument(
        "--realtime",
        type=int,
        metavar="PRIORITY",
        help="run server and client SCHED_FIFO at this priority (chrt -f), above other work",
    )
    parser.add_argument(
        "--load", action="store_true", help="measure idle, then under wrk load (--load-path)"
    )
    parser.add_argument("--load-connections", type=int, default=16, help="wrk -c (default 16)")
    parser.add_argument(
        "--load-path",
        choices=list(LOAD_PATHS),
        default="/plaintext-token",
        help="what wrk loads (default /plaintext-token, the throughput run's (c))",
    )
    parser.add_argument(
        "--load-seconds",
        type=float,
        default=60.0,
        help="at most this long under load per server; fewer samples if it runs out",
    )
    parser.add_argument(
        "--servers",
        help=f"comma-separated, of: {', '.join(SERVERS)} (default: all; with --load, "
        "uvicorn httptools)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave bench/results alone"
    )
    args = parser.parse_args()
    if args.requests is None:
        args.requests = 300 if args.load else 500
    if args.settle is None:
        args.settle = 0.05 if args.load else 0.01
    if args.load and args.realtime:
        parser.error(
            "--load runs without --realtime (a real-time server at full load starves "
            "the rest of the machine)"
        )
    names = (
        args.servers.split(",")
        if args.servers
        else (["uvicorn httptools"] if args.load else list(SERVERS))
    )
    unknown = set(names) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    pin_self()
    prefix: list[str] = []
    if args.realtime:
        chrt = shutil.which("chrt")
        if chrt is None:
            raise SystemExit("--realtime needs chrt (util-linux)")
        prefix = [chrt, "-f", str(args.realtime)]
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.realtime))
    if args.load and shutil.which("wrk") is None:
        raise SystemExit("--load needs wrk (apt-get install wrk)")
    outcomes = []
    for name in names:
        port = free_port()
        outcomes += run_server(args, name, [*prefix, *SERVERS[name](port)], port)
    section = report(args, outcomes)
    print(section)
    if not args.no_write:
        suffix = "-realtime" if args.realtime else "-loaded" if args.load else ""
        write_section(SECTION + suffix, section)


if __name__ == "__main__":
    main()
