"""RA102 (unused token), RA104 (swallowed cancellation), RA105 (unclosed source)."""

from __future__ import annotations

from pathlib import Path

from request_aborted._check import RULES, check_paths

from ._support import check, lines


def test_ra102_reports_token_parameters_the_body_never_reads() -> None:
    # by annotation, by name without annotation, and through `CancellationToken | None`
    assert lines(check("ra102_bad.py")) == [("RA102", 10), ("RA102", 14), ("RA102", 19)]


def test_ra102_points_at_the_parameter() -> None:
    finding = check("ra102_bad.py")[0]
    assert (finding.line, finding.col) == (10, 30)
    assert "`token` is never used" in finding.message


def test_ra102_ignores_declarations_overrides_and_underscored_names() -> None:
    assert check("ra102_good.py") == []


def test_ra102_reads_bare_token_names_as_tokens_only_in_files_that_use_the_library(
    tmp_path: Path,
) -> None:
    (tmp_path / "lexer.py").write_text(
        "def advance(token, access_token):\n    return 1\ndef stop(stopping_token):\n    return 1\n"
    )
    (tmp_path / "service.py").write_text(
        "import request_aborted\ndef advance(token):\n    return 1\n"
    )
    found = [(Path(f.path).name, f.code, f.line) for f in check_paths([tmp_path])]
    assert found == [("lexer.py", "RA102", 3), ("service.py", "RA102", 2)]


def test_ra104_reports_handlers_that_catch_cancellation_and_carry_on() -> None:
    # OperationCancelled, asyncio.CancelledError, CancelledError in a tuple, BaseException, bare
    assert lines(check("ra104_bad.py")) == [
        ("RA104", 19),
        ("RA104", 23),
        ("RA104", 27),
        ("RA104", 31),
        ("RA104", 35),
    ]


def test_ra104_accepts_reraise_raise_from_and_the_deliberate_marker() -> None:
    assert check("ra104_good.py") == []


def test_ra104_does_not_count_a_raise_inside_a_nested_function(tmp_path: Path) -> None:
    (tmp_path / "nested.py").write_text(
        "try:\n"
        "    pass\n"
        "except BaseException:\n"
        "    def later() -> None:\n"
        "        raise RuntimeError\n"
    )
    assert lines(check_paths([tmp_path])) == [("RA104", 3)]


def test_ra105_reports_static_sources_and_sources_never_closed() -> None:
    # module level, class level, linked without close, and `.token` of a temporary
    assert lines(check("ra105_bad.py")) == [
        ("RA105", 7),
        ("RA105", 11),
        ("RA105", 15),
        ("RA105", 21),
    ]


def test_ra105_accepts_with_close_return_and_storing_on_self() -> None:
    assert check("ra105_good.py") == []


def test_ra105_treats_a_default_argument_as_static(tmp_path: Path) -> None:
    (tmp_path / "default.py").write_text(
        "from request_aborted import CancellationTokenSource\n"
        "def run(source=CancellationTokenSource()) -> None:\n"
        "    source.close()\n"
    )
    assert lines(check_paths([tmp_path])) == [("RA105", 2)]


def test_suppression_comments_silence_only_their_line_and_codes() -> None:
    assert check("suppressed.py") == []


def test_noqa_for_another_code_or_inside_a_string_does_not_suppress(tmp_path: Path) -> None:
    (tmp_path / "noqa.py").write_text(
        "from request_aborted import CancellationTokenSource\n"
        "A = CancellationTokenSource()  # noqa: E501\n"
        'B = (CancellationTokenSource(), "# noqa")\n'
        "C = CancellationTokenSource()  # noqa: RA101, RA105\n"
    )
    assert lines(check_paths([tmp_path])) == [("RA105", 2), ("RA105", 3)]


def test_every_rule_is_documented_in_the_rules_module_and_docs() -> None:
    from request_aborted._check import rules

    docs = Path(__file__).parents[3] / "docs" / "checker.md"
    text = docs.read_text()
    for code in RULES:
        assert code in (rules.__doc__ or "")
        assert f"## {code}" in text or f"### {code}" in text
