"""Every Python block in README.md and docs/*.md is a complete example that runs.

The blocks are copies of the files in ``docs/examples/`` (``tests/docs/_examples.py`` explains the
mechanism and rewrites the blocks). These tests keep the two identical, run every file as a script,
hold the checker's "mistake" examples to exactly the findings their ``# RAxxx`` comments announce,
and check that the application examples do what the text around them says.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from starlette.testclient import TestClient

from request_aborted import CancellationToken, CancellationTokenSource, OperationCancelled
from tests._fixtures.servers import ServerProcess
from tests.docs._examples import EXAMPLES, ROOT, Block, blocks, documents, main

ALL_BLOCKS = [block for document in documents() for block in blocks(document)]
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.py"))
SCRIPT_TIMEOUT = 60.0
# What an example that does something when run prints; the others only define things.
PRINTS = {
    "sqlalchemy_search.py": "['amber lamp']\n",
    "sqlalchemy_before_after.py": "['oak desk']\n['amber lamp']\n",
    "sqlalchemy_commit.py": "(7, 1250)\n",
    "testing_vanish.py": "ok\n",
}
# A comment that starts with the code ("# RA101") announces a finding; a noqa comment does not.
_ANNOUNCED = re.compile(r"#\s*(RA\d{3})\b")


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import ``docs/examples/NAME.py`` afresh, as its own module, for this test only."""
    module_name = f"docs_example_{name}"
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_name, module)
    spec.loader.exec_module(module)
    return module


# -- the docs and the files agree ---------------------------------------------------------------


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda block: block.where)
def test_every_python_block_names_its_example_file(block: Block) -> None:
    assert block.example is not None, (
        f"{block.where}: put `<!-- example: docs/examples/NAME.py -->` on the line before the "
        "block and the complete, runnable module in that file (see tests/docs/_examples.py)"
    )
    path = block.example_path()
    assert path is not None and path.is_file(), f"{block.where}: {block.example} does not exist"
    assert path.parent == EXAMPLES, f"{block.where}: examples live in docs/examples/"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda block: block.where)
def test_every_block_is_its_example_file_verbatim(block: Block) -> None:
    path = block.example_path()
    if path is None or not path.is_file():
        pytest.fail(f"{block.where} names no example file")
    assert block.code == path.read_text(), (
        f"{block.where} differs from {block.example}: edit the file, then run "
        "`.venv/bin/python -m tests.docs._examples`"
    )


def test_every_example_file_is_shown_in_the_docs() -> None:
    shown = {block.example_path() for block in ALL_BLOCKS}
    unreferenced = [path.name for path in EXAMPLE_FILES if path not in shown]
    assert unreferenced == [], f"docs/examples files no block shows: {unreferenced}"


def test_the_docs_have_python_examples_to_check() -> None:
    assert len(ALL_BLOCKS) >= 20
    assert {block.document.name for block in ALL_BLOCKS} >= {"README.md", "checker.md"}


def test_check_mode_reports_a_block_that_drifted_from_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    example = tmp_path / "docs" / "examples" / "hello.py"
    example.parent.mkdir(parents=True)
    example.write_text('print("hello")\n')
    document = tmp_path / "README.md"
    document.write_text(
        "Intro\n\n<!-- example: docs/examples/hello.py -->\n```python\nprint('old')\n```\n"
    )
    monkeypatch.setattr("tests.docs._examples.ROOT", tmp_path)
    monkeypatch.setattr("tests.docs._examples.documents", lambda: [document])

    assert main(["--check"]) == 1
    assert "README.md" in capsys.readouterr().out
    assert main([]) == 0
    assert document.read_text().endswith('```python\nprint("hello")\n```\n')
    assert main(["--check"]) == 0


# -- every example runs ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_example_runs_as_a_script(path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(path)], cwd=ROOT, capture_output=True, text=True,
        timeout=SCRIPT_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == PRINTS.get(path.name, "")


# -- the checker's examples flag exactly what they say ---------------------------------------------


def check(path: Path) -> set[tuple[int, str]]:
    done = subprocess.run(
        [sys.executable, "-m", "request_aborted._check", "check", "--format", "json", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    return {(finding["line"], finding["code"]) for finding in json.loads(done.stdout)}


def announced(source: str) -> set[tuple[int, str]]:
    return {
        (number, match.group(1))
        for number, line in enumerate(source.splitlines(), start=1)
        for match in _ANNOUNCED.finditer(line)
    }


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_checker_flags_exactly_the_lines_an_example_marks(path: Path) -> None:
    """``# RA101`` on a line announces that finding there; unmarked examples must be clean."""
    assert check(path) == announced(path.read_text())


def test_the_mistake_examples_cover_every_rule_the_checker_page_shows() -> None:
    marked = {code for path in EXAMPLE_FILES for _, code in announced(path.read_text())}
    assert marked == {"RA101", "RA102", "RA103", "RA104", "RA105"}


def test_the_suppressed_lines_would_be_findings_without_their_comments(tmp_path: Path) -> None:
    source = (EXAMPLES / "checker_noqa.py").read_text()
    bare = tmp_path / "checker_noqa.py"
    bare.write_text(re.sub(r"  # .*", "", source))
    suppressed = {n for n, line in enumerate(source.splitlines(), 1) if "# noqa" in line
                  or "ignore[" in line}  # fmt: skip
    assert check(EXAMPLES / "checker_noqa.py") == set()
    assert check(bare) == {(line, "RA101") for line in suppressed}


# -- the application examples behave as the docs say ----------------------------------------------


class Recorder:
    """A service that answers at once and keeps the token each call was given, as it was then."""

    def __init__(self) -> None:
        self.tokens: list[CancellationToken] = []
        self.remaining: list[float | None] = []

    def _keep(self, token: CancellationToken) -> None:
        self.tokens.append(token)
        self.remaining.append(token.remaining())

    async def search(self, q: str, token: CancellationToken) -> list[str]:
        self._keep(token)
        return [q]

    async def count(self, token: CancellationToken) -> int:
        self._keep(token)
        return 0

    async def build(self, id: int, token: CancellationToken) -> dict[str, int]:
        self._keep(token)
        return {"id": id}


def assert_request_token(token: CancellationToken, remaining: float | None, budget: float) -> None:
    assert isinstance(token, CancellationToken)
    assert token.can_be_cancelled  # the request's own token, not CancellationToken.NONE
    assert not token.is_cancellation_requested  # the request completed
    assert remaining is not None and budget - 5 < remaining <= budget


def test_starlette_example_hands_the_request_token_to_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = load("starlette_app", monkeypatch)
    recorder = Recorder()
    monkeypatch.setattr(example, "service", recorder)
    with TestClient(example.app) as client:
        assert client.get("/search", params={"q": "amber"}).json() == ["amber"]
        assert client.get("/count").json() == {"products": 0}
    assert len(recorder.tokens) == 2
    for token, remaining in zip(recorder.tokens, recorder.remaining, strict=True):
        assert_request_token(token, remaining, budget=30)  # the middleware's timeout=30


def test_starlette_example_searches_its_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    example = load("starlette_app", monkeypatch)
    with TestClient(example.app) as client:
        response = client.get("/search", params={"q": "amber"})
    assert response.json() == ["amber lamp", "amber vase"]


def test_fastapi_example_hands_the_request_token_to_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = load("fastapi_app", monkeypatch)
    recorder = Recorder()
    monkeypatch.setattr(example, "reports", recorder)
    with TestClient(example.app) as client:
        assert client.get("/reports/3").json() == {"id": 3}
    [token], [remaining] = recorder.tokens, recorder.remaining
    assert_request_token(token, remaining, budget=5)  # @request_timeout(5)


def test_fastapi_example_answers_504_when_a_report_outruns_its_five_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = load("fastapi_app", monkeypatch)
    with TestClient(example.app) as client:
        started = time.monotonic()
        response = client.get("/reports/30")  # report 30 takes thirty seconds
        elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
    assert 4.5 < elapsed < 25


def test_deadline_header_example_lets_a_caller_shorten_the_budget_but_never_lengthen_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = load("deadline_headers", monkeypatch)

    def remaining(headers: dict[str, str]) -> float:
        value: float = client.get("/budget", headers=headers).json()["remaining_seconds"]
        return value

    with TestClient(example.app) as client:
        assert 5 < remaining({}) <= 10
        assert 0 < remaining({"grpc-timeout": "2S"}) <= 2
        assert 0 < remaining({"x-envoy-expected-rq-timeout-ms": "500"}) <= 0.5
        assert 5 < remaining({"grpc-timeout": "60S"}) <= 10
        assert 5 < remaining({"grpc-timeout": "soon"}) <= 10  # malformed: ignored


def test_lifetime_example_runs_its_background_service_and_stops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = load("lifetime", monkeypatch)
    for session in (1, 2, 3):  # one TestClient per test, as suites write them: each a fresh run
        with TestClient(example.app) as client:
            assert example.lifetime.started.is_cancellation_requested
            deadline = time.monotonic() + 10
            while client.get("/status").json()["refreshes"] < session:
                assert time.monotonic() < deadline, f"no refresh in session {session}"
                time.sleep(0.01)
        assert example.lifetime.stopped.is_cancellation_requested


def test_testing_example_is_a_passing_test(monkeypatch: pytest.MonkeyPatch) -> None:
    example = load("testing_vanish", monkeypatch)
    example.test_report_stops_when_the_client_leaves()
    assert example.cleaned_up == ["query cancelled"]


@pytest.fixture
def upstream(serve: Callable[..., ServerProcess]) -> ServerProcess:
    return serve("tests.docs._upstream:app")


def test_httpx_example_calls_the_upstream_with_the_remaining_budget(
    upstream: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECOMMENDATIONS_URL", upstream.base_url)
    example = load("httpx_client", monkeypatch)

    async def call() -> list[str]:
        with CancellationTokenSource(timeout=5) as source:
            names: list[str] = await example.recommendations(42, source.token)
        await example.client.aclose()
        return names

    lamp, budget = asyncio.run(call())
    assert lamp == "lamp for 42"
    assert 3000 < int(budget.removeprefix("budget ")) <= 5000


def test_httpx_example_stops_the_call_when_the_token_fires(
    upstream: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECOMMENDATIONS_URL", upstream.base_url)
    example = load("httpx_client", monkeypatch)

    async def call() -> float:
        with CancellationTokenSource() as source:
            asyncio.get_running_loop().call_later(0.2, source.cancel)
            started = time.monotonic()
            with pytest.raises(OperationCancelled):
                await example.recommendations(0, source.token)  # user 0 takes ten seconds
        await example.client.aclose()
        return time.monotonic() - started

    assert asyncio.run(call()) < 5
