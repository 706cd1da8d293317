"""Run Starlette's and FastAPI's own test suites as shipped and with RequestAbortedMiddleware in.

``scripts/conformance`` runs this with the project's ``.venv`` Python (standard library only).
Steps: read the Starlette and FastAPI versions installed in ``.venv``; download their sdists
(cached in ``.cache/conformance/``); install the suites' own test requirements into
``.venv-conformance`` with Starlette and FastAPI pinned to exactly those versions; run each suite
(its asyncio and its trio halves) twice with pytest-xdist, as shipped and with the middleware
injected by ``conformance_inject.py``; compare test by test.

It fails (exit 1) when a test that passes as shipped fails or errors injected, and again when run
once more without another worker beside it (a test that fails only under the load of a busy
machine, a subprocess timing out, is listed but not counted); when a test fails as shipped that
``known-baseline-failures.txt`` does not list (the comparison would silently lose it); or when
too few requests went through the injected middleware to believe it was there.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE = ROOT / ".cache" / "conformance"
VENV = ROOT / ".venv-conformance"
KNOWN_FAILURES = HERE / "known-baseline-failures.txt"

# Each suite: the PyPI project, the dependency groups of its pyproject.toml that its own CI
# installs to run the tests, and the extras of the installed package those tests import.
SUITES = {
    "starlette": {"project": "starlette", "groups": ["dev"], "extra": "full"},
    "fastapi": {"project": "fastapi", "groups": ["tests"], "extra": "all"},
}

# Requirements of those groups left out: none of them is needed to run the tests.
DROPPED = {
    "pytest-cov": "measures coverage; no test needs it",
    "pytest-sugar": "only restyles pytest's terminal output",
    "mypy": "type checker the suites' CI runs as its own step; no test imports it",
    "ty": "type checker the suites' CI runs as its own step; no test imports it",
    "ruff": "linter the suites' CI runs as its own step; no test under tests/ runs it",
    "types-pyyaml": "type stubs, for mypy only",
    "twine": "checks built distributions, not the tests",
}

# Held below releases newer than the suites, with the reason (each seen failing as shipped).
EXTRA_CONSTRAINTS = {
    "sentry-sdk<3": "FastAPI's telemetry tests count sentry-sdk 2's transactions; 3.0 sends spans",
}

# Installed besides the suites' requirements: xdist for -n, trio for the trio halves (Starlette
# lists it, FastAPI through anyio[trio]; named here so the trio halves can never go missing),
# pytest-timeout so a hang ends as a failure (FastAPI's config already names a timeout).
EXTRA_REQUIREMENTS = ["pytest-xdist", "trio", "pytest-timeout"]

# A test gets this long before it fails as hung; generous for a loaded 2-core machine.
TEST_TIMEOUT = 120

# The injection is believed when at least this share of the requests that reached a Starlette or
# FastAPI app went through the middleware, and at least this many tests sent one through it.
MIN_THROUGH_SHARE = 0.95
MIN_TESTS_WITH_REQUESTS = {"starlette": 400, "fastapi": 4000}  # measured: 441, 4600


def log(message: str) -> None:
    print(message, flush=True)


# pip's complaint, once per package, about index directories this machine's pip.conf names but
# does not have: a hundred lines of noise around the lines that matter.
PIP_NOISE = "is ignored: it is neither a file nor a directory"


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(
        "".join(line for line in done.stderr.splitlines(True) if PIP_NOISE not in line)
    )
    done.check_returncode()


# --- setup ---------------------------------------------------------------------------------


def installed_versions() -> dict[str, str]:
    """The versions the project's own .venv runs (this interpreter is that venv's)."""
    return {name: importlib.metadata.version(name) for name in ("starlette", "fastapi", "anyio")}


def unpacked_sdist(project: str, version: str) -> Path:
    """The sdist's tests, unpacked once, without the package itself.

    The package directory is removed so that the tests import the installed (identical) release:
    the one the injection patches and the middleware imports.
    """
    source = CACHE / "src" / f"{project}-{version}"
    if (source / ".unpacked").exists():
        return source
    sdists = CACHE / "sdists"
    sdists.mkdir(parents=True, exist_ok=True)
    archive = sdists / f"{project}-{version}.tar.gz"
    if not archive.exists():
        log(f"downloading the {project} {version} sdist from PyPI")
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"{project}=={version}",
                "--dest",
                str(sdists),
            ],
        )
    shutil.rmtree(source, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(source.parent, filter="data")
    shutil.rmtree(source / project)
    (source / ".unpacked").touch()
    return source


def _name(requirement: str) -> str:
    for separator in "[<>=!~;@ ":
        requirement = requirement.split(separator, 1)[0]
    return requirement.strip().lower().replace("_", "-")


def group_requirements(pyproject: Path, groups: list[str]) -> list[str]:
    """The requirements of dependency groups (PEP 735), includes resolved."""
    declared = tomllib.loads(pyproject.read_text())["dependency-groups"]
    found: list[str] = []

    def walk(group: str) -> None:
        for entry in declared[group]:
            if isinstance(entry, dict):
                walk(entry["include-group"])
            elif entry not in found:
                found.append(entry)

    for group in groups:
        walk(group)
    return found


def write_requirements(sources: dict[str, Path], versions: dict[str, str]) -> tuple[Path, Path]:
    lines = ["# The suites' own test requirements, written by scripts/conformance."]
    dropped: list[str] = []
    for suite, spec in SUITES.items():
        lines.append(f"{spec['project']}[{spec['extra']}]")
        for requirement in group_requirements(sources[suite] / "pyproject.toml", spec["groups"]):
            reason = DROPPED.get(_name(requirement))
            if reason:
                dropped.append(f"{suite}: {requirement}: {reason}")
            else:
                lines.append(requirement)
    lines += EXTRA_REQUIREMENTS
    lines.append(f"-e {ROOT}")
    requirements = CACHE / "requirements.txt"
    requirements.write_text("\n".join(lines) + "\n")
    constraints = CACHE / "constraints.txt"
    constraints.write_text(
        "# Exactly the releases the project's .venv runs.\n"
        + "".join(f"{name}=={version}\n" for name, version in versions.items())
        + "".join(f"{pin}  # {reason}\n" for pin, reason in EXTRA_CONSTRAINTS.items())
    )
    log("requirements left out:\n  " + "\n  ".join(dropped))
    return requirements, constraints


def conformance_venv(sources: dict[str, Path], versions: dict[str, str]) -> tuple[Path, str]:
    """.venv-conformance with the suites' requirements, reinstalled when they change; its digest."""
    requirements, constraints = write_requirements(sources, versions)
    python = VENV / "bin" / "python"
    digest = hashlib.sha1(
        requirements.read_bytes()
        + constraints.read_bytes()
        + (ROOT / "pyproject.toml").read_bytes()
    ).hexdigest()[:16]
    stamp = VENV / f".installed-{digest}"
    if stamp.exists():
        return python, digest
    # From scratch: nothing left over from other requirements, nor from an interrupted install.
    log(f"creating {VENV.name} with {sys._base_executable}")  # type: ignore[attr-defined]
    run([sys._base_executable, "-m", "venv", "--clear", str(VENV)])  # type: ignore[attr-defined]
    log(f"installing the suites' test requirements into {VENV.name}")
    run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "-r",
            str(requirements),
            "-c",
            str(constraints),
        ]
    )
    for name, version in versions.items():
        got = subprocess.run(
            [str(python), "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if got != version:
            raise SystemExit(f"{VENV.name} has {name} {got}, the project runs {version}")
    for stale in VENV.glob(".installed-*"):
        stale.unlink()
    stamp.touch()
    return python, digest


# --- running and comparing -----------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    status: str  # passed, failed, error, skipped
    message: str = ""
    node_id: str = ""  # to run it again; empty in reports written before junit_family=xunit1


_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


def outcomes(junit: Path) -> dict[str, Outcome]:
    """Test id -> outcome; a test reported twice (a teardown error) keeps its worst outcome."""
    result: dict[str, Outcome] = {}
    for case in ET.parse(junit).iter("testcase"):
        key = f"{case.get('classname')}::{case.get('name')}"
        outcome = Outcome("passed", node_id=_node_id(case))
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                status = {"failure": "failed"}.get(child.tag, child.tag)
                message = (child.get("message") or "").strip().splitlines()
                outcome = Outcome(status, message[0][:160] if message else "", outcome.node_id)
                break
        previous = result.get(key)
        if previous is None or _RANK[outcome.status] > _RANK[previous.status]:
            result[key] = outcome
    return result


def _node_id(case: ET.Element) -> str:
    """The pytest node id of a JUnit test case (its ``file`` attribute: ``junit_family=xunit1``).

    The class name is the test's module, dotted, then its class if it has one.
    """
    file = case.get("file")
    if not file:
        return ""
    module = file.removesuffix(".py").replace("/", ".")
    inner = (case.get("classname") or "").removeprefix(module).lstrip(".")
    return "::".join(filter(None, [file, *inner.split("."), case.get("name")]))


def _children_cpu() -> float:
    """CPU seconds of finished child processes: unlike wall time, not inflated by a busy host."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def find_regressions(baseline: dict[str, Outcome], injected: dict[str, Outcome]) -> list[str]:
    """Tests that pass as shipped and fail, error or are missing injected (a crashed worker)."""
    return sorted(
        test
        for test, outcome in baseline.items()
        if outcome.status == "passed"
        and injected.get(test, Outcome("missing")).status not in ("passed", "skipped")
    )


def run_suite(
    python: Path,
    suite: str,
    source: Path,
    mode: str,
    workers: int,
    extra: list[str],
    label: str = "",
) -> tuple[dict[str, Outcome], dict[str, Any], float]:
    results = CACHE / "results"
    results.mkdir(parents=True, exist_ok=True)
    label = label or mode
    junit = results / f"{suite}-{label}.xml"
    output = results / f"{suite}-{label}.log"
    junit.unlink(missing_ok=True)
    counts_dir = CACHE / "counts" / suite
    shutil.rmtree(counts_dir, ignore_errors=True)
    counts_dir.mkdir(parents=True)
    env = dict(os.environ)
    env.pop("CI", None)  # the suites read no CI switch; ours must not leak into them
    cmd = [
        str(python),
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-n",
        str(workers),
        f"--timeout={TEST_TIMEOUT}",
        "--tb=short",  # formatting hundreds of long tracebacks took minutes
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit1",  # names each test's file: a failure can be run again alone
    ]
    if mode == "injected":
        cmd += ["-p", "conformance_inject"]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env["CONFORMANCE_COUNT_DIR"] = str(counts_dir)
    cmd += extra
    log(f"{suite} {label}: {' '.join(cmd[1:])}  (output: {output.relative_to(ROOT)})")
    started, cpu = time.monotonic(), _children_cpu()
    with output.open("w") as out:
        subprocess.run(cmd, cwd=source, env=env, stdout=out, stderr=subprocess.STDOUT)
    elapsed, cpu = time.monotonic() - started, _children_cpu() - cpu
    summary = output.read_text().strip().splitlines()
    log(f"  {summary[-1] if summary else '(no output)'}  [{elapsed:.0f} s, {cpu:.0f} s CPU]")
    if not junit.exists():
        raise SystemExit(f"{suite} {mode} wrote no JUnit report; see {output}")
    counts: dict[str, Any] = {"bypassed": {}}
    for path in counts_dir.glob("*.json"):
        for key, value in json.loads(path.read_text()).items():
            if key == "bypassed":
                counts[key].update(value)
            else:
                counts[key] = counts.get(key, 0) + value
    return outcomes(junit), counts, elapsed


def known_failures() -> dict[str, str]:
    """``suite  test id  # reason`` lines: tests that fail as shipped here, and why."""
    known: dict[str, str] = {}
    for line in KNOWN_FAILURES.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        test, _, reason = line.partition("#")
        known[" ".join(test.split())] = reason.strip()
    return known


def tally(results: dict[str, Outcome]) -> str:
    counted = {status: 0 for status in _RANK}
    for outcome in results.values():
        counted[outcome.status] += 1
    return "/".join(str(counted[status]) for status in ("passed", "failed", "error", "skipped"))


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/conformance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--suite",
        choices=sorted(SUITES),
        action="append",
        help="run only this suite (repeatable; default: both)",
    )
    parser.add_argument(
        "--rerun-baseline",
        action="store_true",
        help="run the suites as shipped even when a full baseline run of the same suites in the "
        "same environment is cached (a baseline never loads this project's code)",
    )
    parser.add_argument("-n", "--workers", type=int, default=2, help="xdist workers (default 2)")
    parser.add_argument(
        "pytest_args",
        nargs="*",
        help="after --: extra pytest arguments (e.g. -- -k websocket); a run "
        "narrowed like this skips the injection-count check",
    )
    args = parser.parse_args()
    suites = args.suite or list(SUITES)
    started, started_cpu = time.monotonic(), _children_cpu()

    versions = installed_versions()
    log("project .venv: " + ", ".join(f"{name} {v}" for name, v in versions.items()))
    sources = {suite: unpacked_sdist(SUITES[suite]["project"], versions[suite]) for suite in SUITES}
    python, digest = conformance_venv(sources, versions)
    setup_done = time.monotonic()

    known = known_failures()
    failed = False
    rows: list[tuple[str, ...]] = []
    details: list[str] = []
    for suite in suites:
        cached = CACHE / "results" / f"{suite}-baseline-{digest}.xml"
        if cached.exists() and not args.rerun_baseline and not args.pytest_args:
            log(
                f"{suite} baseline: reusing {cached.relative_to(ROOT)} (same suite, same "
                "environment; --rerun-baseline runs it again)"
            )
            baseline, base_time = outcomes(cached), 0.0
        else:
            baseline, _, base_time = run_suite(
                python, suite, sources[suite], "baseline", args.workers, args.pytest_args
            )
        injected, counts, inj_time = run_suite(
            python, suite, sources[suite], "injected", args.workers, args.pytest_args
        )

        regressions = find_regressions(baseline, injected)
        passed_alone: list[str] = []
        again = [injected[t].node_id for t in regressions if t in injected and injected[t].node_id]
        if again:
            # Once more, without another worker beside them: what passes then failed only for
            # the load the run put on the machine. A regression fails every time.
            rerun, _, _ = run_suite(
                python, suite, sources[suite], "injected", 0, again, label="injected-rerun"
            )
            passed_alone = [t for t in regressions if rerun.get(t, Outcome("")).status == "passed"]
            regressions = [t for t in regressions if t not in passed_alone]
        newly_skipped = sorted(
            test
            for test, outcome in baseline.items()
            if outcome.status == "passed" and injected.get(test, Outcome("")).status == "skipped"
        )
        base_failures = sorted(
            test for test, outcome in baseline.items() if outcome.status in ("failed", "error")
        )
        unexpected = [test for test in base_failures if f"{suite} {test}" not in known]
        stale = sorted(
            key
            for key in known
            if key.startswith(f"{suite} ")
            and baseline.get(key.split(" ", 1)[1], Outcome("")).status == "passed"
        )
        fixed = sorted(
            test for test in base_failures if injected.get(test, Outcome("")).status == "passed"
        )

        through = counts.get("middleware_requests", 0)
        reached = counts.get("app_requests", 0)
        tests_with = counts.get("tests_with_requests", 0)
        plausible = (
            counts.get("apps_injected", 0) > 0
            and through >= MIN_THROUGH_SHARE * reached
            and (bool(args.pytest_args) or tests_with >= MIN_TESTS_WITH_REQUESTS[suite])
        )
        failed |= bool(regressions) or bool(unexpected) or not plausible
        if not args.pytest_args and not unexpected and not cached.exists():
            for old in cached.parent.glob(f"{suite}-baseline-*.xml"):
                old.unlink()
            shutil.copy(CACHE / "results" / f"{suite}-baseline.xml", cached)

        rows.append(
            (
                suite,
                str(len(baseline)),
                tally(baseline),
                tally(injected),
                str(len(regressions)),
                f"{through}/{reached}",
                str(tests_with),
                f"{base_time:.0f}+{inj_time:.0f} s",
            )
        )
        if regressions:
            details.append(
                f"\n{suite}: {len(regressions)} REGRESSIONS (pass as shipped, fail injected):"
            )
            details += [
                f"  {test}\n      {injected.get(test, Outcome('missing')).status}: "
                f"{injected.get(test, Outcome('missing')).message}"
                for test in regressions
            ]
        if passed_alone:
            details.append(
                f"\n{suite}: failed injected beside other tests, passed when run alone again "
                "(timing under load, not counted as regressions):"
            )
            details += [f"  {test}: {injected[test].message}" for test in passed_alone]
        if newly_skipped:
            details.append(
                f"\n{suite}: passed as shipped, skipped injected (not counted as regressions):"
            )
            details += [f"  {test}: {injected[test].message}" for test in newly_skipped]
        if unexpected:
            details.append(
                f"\n{suite}: UNEXPECTED BASELINE FAILURES (fail as shipped; list them "
                f"with a reason in {KNOWN_FAILURES.relative_to(ROOT)} if they are "
                "the environment's):"
            )
            details += [
                f"  {test}\n      {baseline[test].status}: {baseline[test].message}"
                for test in unexpected
            ]
        listed = [test for test in base_failures if f"{suite} {test}" in known]
        if listed:
            details.append(f"\n{suite}: known baseline failures (fail as shipped here):")
            details += [f"  {test}: {known[f'{suite} {test}']}" for test in listed]
        if stale:
            details.append(
                f"\n{suite}: listed as known baseline failures but passed (remove them):"
            )
            details += [f"  {key}" for key in stale]
        if fixed:
            details.append(f"\n{suite}: fail as shipped, pass injected:")
            details += [f"  {test}" for test in fixed]
        if counts.get("bypassed"):
            details.append(
                f"\n{suite}: tests whose requests reached an app without going through the "
                "middleware (requests):"
            )
            details += [f"  {test}: {n}" for test, n in sorted(counts["bypassed"].items())]
        if not plausible:
            details.append(
                f"\n{suite}: INJECTION NOT PROVEN: {through} of {reached} requests to apps went "
                f"through the middleware (need {MIN_THROUGH_SHARE:.0%}), {tests_with} tests sent "
                f"one (need {MIN_TESTS_WITH_REQUESTS[suite]}), "
                f"{counts.get('apps_injected', 0)} apps injected"
            )

    header = (
        "suite",
        "tests",
        "baseline p/f/e/s",
        "injected p/f/e/s",
        "regressions",
        "requests via mw/to apps",
        "tests w/ requests",
        "time base+inj",
    )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    log("")
    for row in [header, *rows]:
        log("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    for line in details:
        log(line)
    total = time.monotonic() - started
    log(
        f"\nsetup {setup_done - started:.0f} s, total {total:.0f} s, "
        f"{_children_cpu() - started_cpu:.0f} s CPU "
        f"({args.workers} xdist workers); reports in {(CACHE / 'results').relative_to(ROOT)}/"
    )
    log("conformance: FAILED" if failed else "conformance: OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
