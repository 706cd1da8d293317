"""Finding files, surviving bad ones, and running over real third-party code."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from request_aborted._check import check_paths, iter_python_files


def test_unparseable_files_are_reported_as_ra000_and_the_rest_is_still_checked(
    tmp_path: Path,
) -> None:
    (tmp_path / "broken.py").write_text("def broken(:\n    pass\n")
    (tmp_path / "nul.py").write_bytes(b"x = 1\x00\n")
    (tmp_path / "leak.py").write_text(
        "from request_aborted import CancellationTokenSource\nS = CancellationTokenSource()\n"
    )
    findings = check_paths([tmp_path])
    assert [(Path(f.path).name, f.code, f.line) for f in findings] == [
        ("broken.py", "RA000", 1),
        ("leak.py", "RA105", 2),
        ("nul.py", "RA000", 1),
    ]
    assert findings[0].message.startswith("cannot parse: ")


def test_source_that_only_warns_is_parsed_not_reported(tmp_path: Path) -> None:
    (tmp_path / "escapes.py").write_text('PATTERN = "\\d+"\n')
    assert check_paths([tmp_path]) == []


def test_columns_count_characters_not_utf8_bytes(tmp_path: Path) -> None:
    (tmp_path / "accents.py").write_text(
        "from request_aborted import CancellationTokenSource\n"
        "café = 'é'; S = CancellationTokenSource()\n",
        encoding="utf-8",
    )
    [finding] = check_paths([tmp_path])
    assert (finding.line, finding.col) == (2, 17)


def test_directories_are_walked_without_hidden_dirs_virtualenvs_or_caches(tmp_path: Path) -> None:
    for name in ("app/a.py", "app/sub/b.py", ".hidden/c.py", ".venv/d.py", "__pycache__/e.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    (tmp_path / "app" / "notes.txt").write_text("")
    found = [path.relative_to(tmp_path).as_posix() for path in iter_python_files([tmp_path])]
    assert found == ["app/a.py", "app/sub/b.py"]


def test_a_missing_path_is_an_error_not_a_clean_result(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        check_paths([tmp_path / "missing"])


@pytest.mark.parametrize("package", ["starlette", "httpx"])
def test_the_checker_runs_over_installed_third_party_packages(package: str) -> None:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations is not None
    locations = list(spec.submodule_search_locations)
    started = time.perf_counter()
    findings = check_paths(locations)
    elapsed = time.perf_counter() - started
    assert [f for f in findings if f.code == "RA000"] == []
    assert elapsed < 30
    assert sum(1 for _ in iter_python_files(locations)) > 10
