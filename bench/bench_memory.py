"""Does a server with RequestAbortedMiddleware hold on to memory? RSS over 100,000 requests.

A uvicorn server (httptools, uvloop, one worker) with the middleware answers keep-alive requests
from wrk, alternately ``/plaintext`` (the token is never looked at) and ``/plaintext-token`` (the
handler awaits inside ``token.scope()``, which starts the connection watcher). A bare Starlette
server answering ``/plaintext`` and ``/plaintext-sleep`` alternately runs beside it as the
reference, chunk for chunk. Every ``--chunk`` requests (short wrk runs whose Lua script stops
sending at the count) the script reads the server's RSS with psutil, then ``/stats``: live objects
after a full collection, asyncio tasks, and how many objects the cyclic GC had to free (reference
cycles left by requests; reference counting frees everything else at once).

Reproduce with::

    .venv/bin/python bench/bench_memory.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _util import (
    Server,
    command_line,
    environment,
    free_port,
    get,
    get_json,
    pin_self,
    table,
    uvicorn_argv,
    write_section,
    wrk,
)

SECTION = "bench_memory"
MIB = 1024 * 1024

# One wrk thread: its Lua state counts the responses and stops sending at the limit (wrk itself
# still waits for -d to pass). Requests alternate between the two paths given after "--".
LUA = """
local limit, responses, n = 0, 0, 0
local requests = {}

function init(args)
  limit = tonumber(args[1])
  requests[1] = wrk.format("GET", args[2])
  requests[2] = wrk.format("GET", args[3])
end

function request()
  n = n + 1
  return requests[n % 2 + 1]
end

function response(status, headers, body)
  responses = responses + 1
  if responses >= limit then
    wrk.thread:stop()
  end
end
"""


@dataclass
class Subject:
    name: str
    factory: str
    paths: tuple[str, str]
    pythonpath: tuple[str, ...] = ()
    server: Server | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)  # requests, rss, stats

    def sample(self, requests: int) -> None:
        assert self.server is not None
        rss = self.server.rss()  # before /stats: its gc.collect() must not flatter the number
        stats = get_json(self.server.url("/stats"))
        self.samples.append({"requests": requests, "rss": rss, **stats})


def run(args: argparse.Namespace, subjects: list[Subject], script: Path) -> None:
    try:
        for subject in subjects:
            port = free_port()
            argv = uvicorn_argv(subject.factory, port)
            subject.server = Server(subject.name, argv, port, "/plaintext",
                                    pythonpath=subject.pythonpath).start()  # fmt: skip
            for path in subject.paths * 50:  # import and warm every code path once
                get(subject.server.url(path))
            subject.sample(0)
        done = dict.fromkeys((subject.name for subject in subjects), 0)
        started = time.monotonic()
        while min(done.values()) < args.requests:
            for subject in subjects:  # chunk for chunk, so both see the same machine
                assert subject.server is not None
                chunk = 0
                while chunk < args.chunk:
                    # wrk always runs for -d; the script stops sending at the limit, so a
                    # chunk takes a few short runs and overshoots by at most a few requests.
                    result = wrk(
                        subject.server.url("/"),
                        seconds=2,
                        connections=args.connections,
                        script=script,
                        script_args=(str(args.chunk - chunk), *subject.paths),
                    )
                    if result.errors:
                        raise RuntimeError(f"{subject.name}: {result.errors} errors")
                    chunk += result.requests
                done[subject.name] += chunk
                subject.sample(done[subject.name])
            elapsed = time.monotonic() - started
            print(f"{min(done.values()):,} requests after {elapsed:.0f}s", file=sys.stderr)
    finally:
        for subject in subjects:
            if subject.server is not None:
                subject.server.stop()


def report(args: argparse.Namespace, subjects: list[Subject]) -> str:
    samples_rows = []
    for index in range(len(subjects[0].samples)):
        row: list[object] = []
        for subject in subjects:
            sample = subject.samples[index]
            if not row:
                row.append(f"{sample['requests']:,}")
            row += [f"{sample['rss'] / MIB:.1f}", f"{sample['gc_objects']:,}"]
        samples_rows.append(row)
    samples_header = ["requests"]
    for subject in subjects:
        samples_header += [f"{subject.name} RSS MiB", f"{subject.name} live GC objects"]

    summary = []
    for subject in subjects:
        first, warm, last = subject.samples[0], subject.samples[1], subject.samples[-1]
        half = subject.samples[len(subject.samples) // 2]
        requests = last["requests"] - first["requests"]
        garbage = (last["gc_collected"] - first["gc_collected"]) / requests
        summary.append(
            (
                subject.name,
                f"`{subject.paths[0]}` + `{subject.paths[1]}`",
                f"{last['requests']:,}",
                f"{first['rss'] / MIB:.1f}",
                f"{last['rss'] / MIB:.1f}",
                f"{(last['rss'] - warm['rss']) / MIB:+.1f}",
                f"{(last['rss'] - half['rss']) / MIB:+.1f}",
                f"{last['gc_objects'] - warm['gc_objects']:+,}",
                last["tasks"],
                f"{garbage:.1f}",
            )
        )
    summary_header = (
        "server",
        "paths (alternating)",
        "requests",
        "RSS at start MiB",
        "RSS at end MiB",
        f"growth after the first {args.chunk:,}",
        "growth over the second half",
        f"live objects after the first {args.chunk:,}",
        "asyncio tasks at end",
        "objects freed by the cyclic GC per request",
    )
    return "\n".join(
        [
            "## Memory: RSS over many requests (`bench/bench_memory.py`)",
            "",
            f"reproduce: `{command_line()}`",
            "",
            f"{environment('starlette', 'uvicorn', 'httptools', 'uvloop', 'psutil')}.",
            "",
            "uvicorn `--http httptools --loop uvloop --workers 1`; wrk with "
            f"`-t1 -c{args.connections}` and a Lua script that alternates the two paths and "
            f"stops after {args.chunk:,} responses; servers take turns chunk by chunk. RSS is "
            "read before `/stats` (whose `gc.collect()` would otherwise flatter it). Growth is "
            "measured from the sample after the first chunk (allocator and caches warm), and over "
            "the second half of the run; *live objects* is `len(gc.get_objects())` after a full "
            "collection.",
            "",
            table(summary_header, summary),
            "",
            table(samples_header, samples_rows),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="per server")
    parser.add_argument("--chunk", type=int, default=10_000, help="requests between samples")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--candidate",
        type=Path,
        help="a folder holding a modified request_aborted package: adds a third server",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave bench/results alone"
    )
    args = parser.parse_args()
    pin_self()
    subjects = [
        Subject("middleware", "middleware", ("/plaintext", "/plaintext-token")),
        Subject("bare", "bare", ("/plaintext", "/plaintext-sleep")),
    ]
    if args.candidate:
        subjects.append(
            Subject("candidate", "middleware", ("/plaintext", "/plaintext-token"),
                    (str(args.candidate),))
        )  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-memory-") as script:
        script.write(LUA)
        script.flush()
        run(args, subjects, Path(script.name))
    section = report(args, subjects)
    print(section)
    if not args.no_write:
        write_section(SECTION, section)


if __name__ == "__main__":
    main()
