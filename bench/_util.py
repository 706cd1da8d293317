"""Helpers the server benchmarks share: pinned server processes, wrk, and the results file.

The machine has two cores and other work on it, so every benchmark here runs its server on one core
and its load generator on the other (``taskset``), compares variants that ran side by side in the
same run, and reports medians. Servers listen on 127.0.0.1 only and are stopped (SIGTERM, then
SIGKILL) when the benchmark ends, whatever happens.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results" / "overhead.md"
HOST = "127.0.0.1"

# Server on one core, load generator (and this script) on the other, when there are two.
SERVER_CPU = "0"
CLIENT_CPU = "1"
PINNING = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cpu: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run on ``cpu`` (taskset execs the command, so the pid stays the server's)."""
    return ["taskset", "-c", cpu, *argv] if PINNING else list(argv)


def pin_self() -> None:
    """Keep this script off the server's core; stop cleanly on SIGTERM and SIGINT.

    Both signals raise in the main thread, so the ``finally`` blocks that stop the servers run
    (a background job's SIGINT is otherwise ignored, and SIGTERM would skip them).
    """
    if PINNING:
        os.sched_setaffinity(0, {int(CLIENT_CPU)})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def command_line() -> str:
    """The command that reproduces this run, relative to the repository root."""
    script = Path(sys.argv[0]).resolve().relative_to(ROOT)
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])


def uvicorn_argv(
    factory: str,
    port: int,
    *,
    http: str = "httptools",
    loop: str = "uvloop",
    python: str = sys.executable,
) -> list[str]:
    """uvicorn serving ``bench/apps.py:<factory>()`` on one worker, without access log."""
    return [
        python, "-m", "uvicorn", f"apps:{factory}", "--factory", "--app-dir", str(BENCH),
        "--host", HOST, "--port", str(port), "--http", http, "--loop", loop, "--workers", "1",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def hypercorn_argv(factory: str, port: int, *, python: str = sys.executable) -> list[str]:
    """hypercorn (asyncio worker) serving ``bench/apps.py:<factory>()``."""
    return [
        python, "-m", "hypercorn", f"apps:{factory}()", "--bind", f"{HOST}:{port}",
        "--worker-class", "asyncio", "--workers", "1", "--log-level", "warning",
    ]  # fmt: skip


class Server:
    """A server process pinned to the server core; a context manager that always stops it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        ready_path: str,
        *,
        pythonpath: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.pythonpath = [*pythonpath, str(BENCH)]
        self.argv = list(argv)
        self.port = port
        self.ready_path = ready_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log")  # noqa: SIM115

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def start(self, timeout: float = 30.0) -> Self:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(self.pythonpath),
        }
        self.process = subprocess.Popen(
            pinned(SERVER_CPU, self.argv),
            cwd=BENCH,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                get(self.url(self.ready_path), timeout=1.0)
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} never answered:\n{self.log()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._log.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def get_json(url: str, timeout: float = 10.0) -> Any:
    return json.loads(get(url, timeout))


# -- wrk --------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    errors: int  # socket errors plus non-2xx/3xx responses

    @classmethod
    def parse(cls, output: str) -> WrkResult:
        done = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
        rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
        if done is None or rps is None:
            raise RuntimeError(f"cannot read wrk's output:\n{output}")
        scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
        errors = 0
        socket_errors = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
        )
        if socket_errors:
            errors += sum(map(int, socket_errors.groups()))
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
        if non_2xx:
            errors += int(non_2xx.group(1))
        return cls(int(done.group(1)), float(done.group(2)) * scale, float(rps.group(1)), errors)


def wrk_argv(url: str, seconds: float, connections: int, threads: int = 1) -> list[str]:
    return pinned(
        CLIENT_CPU,
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
         "--timeout", "5s", url],
    )  # fmt: skip


def wrk_together(urls: Sequence[str], *, seconds: float, connections: int) -> list[WrkResult]:
    """One wrk per URL, all started at once on the client core; results in the same order."""
    processes = [
        subprocess.Popen(
            wrk_argv(url, seconds, connections),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for url in urls
    ]
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=seconds + 30)
        if process.returncode != 0:
            raise RuntimeError(f"wrk failed ({process.returncode}):\n{stderr}")
        outputs.append(WrkResult.parse(stdout))
    return outputs


def wrk(
    url: str,
    *,
    seconds: float,
    connections: int,
    threads: int = 1,
    script: Path | None = None,
    script_args: Iterable[str] = (),
) -> WrkResult:
    """One wrk run on the client core; bounded by ``seconds`` (and by the script, if any)."""
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s"]
    argv += ["--timeout", "5s"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    extra = list(script_args)
    if extra:
        argv += ["--", *extra]
    done = subprocess.run(
        pinned(CLIENT_CPU, argv), capture_output=True, text=True, timeout=seconds + 30, check=True
    )
    return WrkResult.parse(done.stdout)


# -- reporting --------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 500 samples is the 495th smallest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def source_revision() -> str:
    """The commit the measured package comes from, flagged when its files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "middleware"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"{commit} (+ uncommitted changes)" if dirty else commit


# Read when the script starts, before its servers import the package (others may commit meanwhile).
REVISION = source_revision()


def environment(*packages: str, pinned: bool = True) -> str:
    """One line describing where the numbers come from. ``pinned``: whether the script runs a
    server and a client on cores of their own (the in-process ones run neither)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = ", ".join(f"{name} {package_version(name)}" for name in packages)
    versions = f"request_aborted at {REVISION}, {versions}"
    pinning = (
        f"server pinned to CPU {SERVER_CPU}, client to CPU {CLIENT_CPU}"
        if PINNING and pinned
        else "no CPU pinning"
    )
    return (
        f"Python {platform.python_version()}, {versions}; {cpu}, {os.cpu_count()} cores, "
        f"Linux {platform.release()}; {pinning}; {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


_PREAMBLE = """# Overhead of RequestAbortedMiddleware

Real servers on 127.0.0.1, measured by the scripts in `bench/`. Each section is written by the
script named in its `reproduce:` line; run it again to replace the section with fresh numbers.
The machine (2 vCPUs, shared with other work, stolen time invisible to it) is noisy: a server's
request rate alone can halve from one 5 s run to the next. Trust the *paired* throughput ratios
(variant and baseline loaded at the same time) and the SCHED_FIFO latency run; the interleaved
ratios and the latency run without `--realtime` show how much the machine itself moves.
"""


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of ``bench/results/overhead.md``."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}\n"
    text = RESULTS.read_text() if RESULTS.exists() else _PREAMBLE
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    temporary = RESULTS.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(RESULTS)
