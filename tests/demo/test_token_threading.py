"""The demo is the code users copy, so its token discipline is checked, not just hoped for.

* The library's own checker (``request-aborted check``) finds nothing to complain about.
* Every async method of a service or repository takes the token, as its last parameter
  (.NET's CA1068), except the two that do no work a client could be waiting for.
* Every route handler (an async function returning a response) declares the token, so
  ``inject`` hands it over.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from request_aborted._check import check_paths
from tests._fixtures.servers import ROOT

LAYERS = ("app", "services", "repositories")
# No I/O a client waits for: opening a session (the first statement takes the token) and
# disposing of the engine at shutdown.
NO_TOKEN = {"Database.unit_of_work", "Database.dispose"}


def python_files(*directories: str) -> Iterator[Path]:
    for directory in directories:
        yield from sorted((ROOT / directory).rglob("*.py"))


def async_methods(path: Path) -> Iterator[tuple[str, ast.AsyncFunctionDef]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AsyncFunctionDef) and not item.name.startswith("__"):
                    yield f"{node.name}.{item.name}", item


def annotation(argument: ast.arg) -> str:
    return ast.unparse(argument.annotation) if argument.annotation else ""


def test_the_checker_finds_nothing() -> None:
    findings = check_paths([str(ROOT / layer) for layer in LAYERS])
    assert not findings, "\n".join(map(str, findings))


@pytest.mark.parametrize("layer", ["services", "repositories"])
def test_every_async_method_takes_the_token_last(layer: str) -> None:
    offenders = []
    for path in python_files(layer):
        for name, method in async_methods(path):
            if name in NO_TOKEN:
                continue
            arguments = method.args.args + method.args.kwonlyargs
            last = arguments[-1] if arguments else None
            if last is None or annotation(last) != "CancellationToken":
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, "token missing or not last:\n" + "\n".join(offenders)


def test_every_route_handler_declares_the_token() -> None:
    offenders = []
    for path in python_files("app/routes"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if not isinstance(node, ast.AsyncFunctionDef) or node.name.startswith("_"):
                continue
            returns = ast.unparse(node.returns) if node.returns else ""
            annotations = [annotation(argument) for argument in node.args.args]
            if returns.endswith("Response") and "CancellationToken" not in annotations:
                offenders.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not offenders, "handlers without a token:\n" + "\n".join(offenders)
