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

Target: token p99 <= 2 ms on loopback.

Reproduce with::

    .venv/bin/python bench/bench_disconnect_latency.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from _util import (
    Server,
    command_line,
    environment,
    free_port,
    get,
    get_json,
    hypercorn_argv,
    median,
    percentile,
    pin_self,
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
    not_counted: int = 0  # closed before the handler waited, or never fired


@dataclass
class Outcome:
    server: str
    mode: str
    token: Samples
    control: Samples


SERVERS: dict[str, Callable[[int], list[str]]] = {
    "uvicorn h11": lambda port: uvicorn_argv("latency", port, http="h11"),
    "uvicorn httptools": lambda port: uvicorn_argv("latency", port, http="httptools"),
    "hypercorn": lambda port: hypercorn_argv("latency", port),
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


def measure(name: str, port: int, mode: str, count: int, settle: float) -> Outcome:
    closes: dict[tuple[bool, str], float] = {}
    for n in range(count):
        for control in (False, True):  # one token request, one control, alternately
            key = f"{n}-{time.monotonic_ns()}"
            closes[control, key] = one_request(port, PATHS[mode, control] + key, mode, settle)
            time.sleep(0.002)  # let the server finish with this one before the next arrives
    time.sleep(0.2)
    records: dict[str, list[float | None]] = get_json(f"http://127.0.0.1:{port}/records")
    outcome = Outcome(name, mode, Samples(), Samples())
    for (control, key), closed in closes.items():
        samples = outcome.control if control else outcome.token
        entered, fired, stopped = records.get(key, (None, None, None))
        if entered is None or entered > closed or fired is None:
            samples.not_counted += 1
            continue
        samples.fired.append((fired - closed) * 1e3)
        if stopped is not None:
            samples.stopped.append((stopped - closed) * 1e3)
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
        rows.append(
            (
                outcome.server,
                outcome.mode,
                len(token.fired),
                ms(control.fired),
                ms(control.fired, 0.99),
                ms(token.fired),
                f"**{ms(token.fired, 0.99)}**",
                ms(token.fired, 1.0),
                f"{added:+.3f}",
                ms(token.stopped),
                ms(token.stopped, 0.99),
                token.not_counted + control.not_counted,
                f"<= {TARGET_P99_MS:g}: {verdict}",
            )
        )
    header = (
        "server",
        "client closed",
        "samples",
        "control p50",
        "control p99",
        "token p50",
        "token p99",
        "token max",
        "added p50",
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
    return "\n".join(
        [
            "## Disconnect latency: client close to token firing"
            + (", SCHED_FIFO" if args.realtime else "")
            + " (`bench/bench_disconnect_latency.py`)",
            "",
            f"reproduce: `{command_line()}`",
            "",
            f"{environment('starlette', 'uvicorn', 'httptools', 'uvloop', 'h11', 'hypercorn')}.",
            "",
            f"All times in ms from the client's `time.monotonic()` just before `close()`. "
            f"{args.requests} token requests per row, one at a time, each on a new connection, "
            "alternating one for one with the control. *token*: when the `token.register` "
            "callback ran; *stopped*: when the interrupted handler's `finally` ran; *control*: "
            "when a bare ASGI handler in front of the middleware got `http.disconnect` from the "
            "server (the floor); *added p50*: token p50 minus control p50. *before response*: "
            f"the client closes {args.settle * 1e3:g} ms after sending the request, the handler "
            "waiting in `token.scope()` before it sent anything; *mid-stream*: the client closes "
            "as soon as it has read the first chunk of a streaming response whose generator "
            "then waits in `token.scope()`. uvicorn runs `--loop uvloop`, hypercorn its asyncio "
            f"worker. *not counted*: closed before the handler waited, or never fired.{realtime}",
            "",
            table(header, rows),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="per server and mode")
    parser.add_argument(
        "--settle", type=float, default=0.01, help="seconds between request and close"
    )
    parser.add_argument(
        "--realtime",
        type=int,
        metavar="PRIORITY",
        help="run server and client SCHED_FIFO at this priority (chrt -f), above other work",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave bench/results alone"
    )
    args = parser.parse_args()
    pin_self()
    prefix: list[str] = []
    if args.realtime:
        chrt = shutil.which("chrt")
        if chrt is None:
            raise SystemExit("--realtime needs chrt (util-linux)")
        prefix = [chrt, "-f", str(args.realtime)]
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.realtime))
    outcomes = []
    for name, command in SERVERS.items():
        port = free_port()
        argv = [*prefix, *command(port)]
        with Server(name.replace(" ", "-"), argv, port, "/plaintext") as server:
            for _ in range(20):  # warm up the server's code paths
                get(server.url("/plaintext"))
            for mode in MODES:
                measure(name, port, mode, 20, args.settle)  # warm-up, not counted
                outcomes.append(measure(name, port, mode, args.requests, args.settle))
                print(f"{name} / {mode}: done", file=sys.stderr)
    section = report(args, outcomes)
    print(section)
    if not args.no_write:
        write_section(SECTION + ("-realtime" if args.realtime else ""), section)


if __name__ == "__main__":
    main()
