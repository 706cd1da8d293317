"""Deadline headers: ``grpc-timeout`` and millisecond headers, parsed leniently, rendered safely."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from request_aborted import DeadlineHeader
from request_aborted._deadline import (
    DEFAULT_DEADLINE_HEADER,
    format_grpc_timeout,
    format_milliseconds,
    parse_grpc_timeout,
    parse_milliseconds,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1H", 3600.0),
        ("2M", 120.0),
        ("3S", 3.0),
        ("250m", 0.25),
        ("1500u", 0.0015),
        ("7n", 7e-9),
        ("0S", 0.0),
        ("99999999S", 99_999_999.0),
        ("00000001m", 0.001),
        (" 10S ", 10.0),
    ],
)
def test_grpc_timeout_parse_reads_every_unit(value: str, seconds: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "S",
        "10",  # no unit
        "10s",  # units are case sensitive: "s" is not a unit
        "10X",
        "123456789S",  # more than eight digits
        "-1S",
        "+1S",
        "1.5S",
        "1 S",
        "1_0S",
        "\u0661\u0662S",  # ARABIC-INDIC digits one and two: digits, but not ASCII ones
        "abc",
    ],
)
def test_grpc_timeout_parse_returns_none_for_malformed_values(value: str) -> None:
    assert parse_grpc_timeout(value) is None


@pytest.mark.parametrize(
    ("seconds", "value"),
    [
        (0.25, "250m"),
        (0.1, "100m"),
        (4.001, "4001m"),  # exact although 4.001 / 0.001 is not exactly 4001 in binary
        (0.0001, "1m"),  # rounded up to the unit: never "0m" for time that is left
        (0.0, "0m"),
        (-5.0, "0m"),  # an expired budget is zero, not negative
        (99_999.999, "99999999m"),
        (100_000.0, "100000S"),
        (100_000.5, "100001S"),
        (99_999_999 * 60.0, "99999999M"),
        (1e20, "99999999H"),
    ],
)
def test_grpc_timeout_format_picks_the_finest_unit_that_fits_and_rounds_up(
    seconds: float, value: str
) -> None:
    assert format_grpc_timeout(seconds) == value


@given(st.integers(min_value=0, max_value=99_999_999))
@example(4001)  # 4.001 / 1e-3 == 4001.0000000000005
def test_grpc_timeout_format_is_exact_for_whole_milliseconds(milliseconds: int) -> None:
    rendered = format_grpc_timeout(milliseconds / 1000)
    assert rendered == f"{milliseconds}m"
    assert parse_grpc_timeout(rendered) == pytest.approx(milliseconds / 1000)


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_grpc_timeout_format_never_gives_less_time_and_always_parses(seconds: float) -> None:
    rendered = format_grpc_timeout(seconds)
    parsed = parse_grpc_timeout(rendered)
    assert parsed is not None
    assert parsed >= seconds - 1e-6 * max(1.0, seconds)  # rounded up, up to float noise
    assert len(rendered) <= 9


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1500", 1.5), ("0", 0.0), ("250.5", 0.2505), (" 30000 ", 30.0)],
)
def test_milliseconds_parse_reads_whole_and_decimal_values(value: str, seconds: float) -> None:
    assert parse_milliseconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "abc", "-1", "nan", "inf", "-inf", "1,5", "10ms"])
def test_milliseconds_parse_returns_none_for_malformed_values(value: str) -> None:
    assert parse_milliseconds(value) is None


@pytest.mark.parametrize(
    ("seconds", "value"),
    [
        (1.5, "1500"),
        (1.001, "1001"),  # exact although 1.001 * 1000 is 1000.9999999999999 in binary
        (0.0009, "0"),  # rounded down: the receiver must never get more time than is left
        (2.9999, "2999"),
        (-1.0, "0"),
    ],
)
def test_milliseconds_format_rounds_down_to_whole_milliseconds(seconds: float, value: str) -> None:
    assert format_milliseconds(seconds) == value


@given(st.integers(min_value=0, max_value=10**13))
@example(1001)  # 1.001 * 1000 == 1000.9999999999999
@example(137_438_953_471)  # large enough that rounding to a fixed number of decimals fails
def test_milliseconds_format_is_exact_for_whole_milliseconds(milliseconds: int) -> None:
    rendered = format_milliseconds(milliseconds / 1000)
    assert rendered == str(milliseconds)
    assert parse_milliseconds(rendered) == pytest.approx(milliseconds / 1000)


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_milliseconds_format_never_gives_more_time_than_is_left(seconds: float) -> None:
    parsed = parse_milliseconds(format_milliseconds(seconds))
    assert parsed is not None
    assert parsed <= seconds + 1e-9 * max(1.0, seconds)


def test_deadline_header_of_grpc_timeout_uses_the_grpc_format() -> None:
    header = DeadlineHeader.of("Grpc-Timeout")
    assert header == DeadlineHeader("grpc-timeout", "grpc")
    assert header.parse("250m") == pytest.approx(0.25)
    assert header.render(0.25) == "250m"
    assert header.parse("250") is None


def test_deadline_header_of_any_other_name_uses_milliseconds() -> None:
    header = DeadlineHeader.of("X-Envoy-Expected-RQ-Timeout-Ms")
    assert header == DeadlineHeader("x-envoy-expected-rq-timeout-ms", "ms")
    assert header.parse("1500") == pytest.approx(1.5)
    assert header.render(1.5) == "1500"
    assert header.parse("250m") is None


def test_deadline_header_of_a_header_returns_it_unchanged() -> None:
    header = DeadlineHeader("x-budget", "grpc")
    assert DeadlineHeader.of(header) is header


def test_deadline_header_default_is_x_request_timeout_ms_in_milliseconds() -> None:
    assert (DEFAULT_DEADLINE_HEADER.name, DEFAULT_DEADLINE_HEADER.format) == (
        "x-request-timeout-ms",
        "ms",
    )


def test_deadline_header_is_immutable() -> None:
    header = DeadlineHeader.of("grpc-timeout")
    with pytest.raises(dataclasses.FrozenInstanceError):
        header.name = "other"  # type: ignore[misc]


NOT_PLAIN_DIGITS = ["1e3", "1_000", "+5", "inf", "nan", "-1", "\u0661\u0660\u0660", "0x10", ""]


@pytest.mark.parametrize("value", NOT_PLAIN_DIGITS)
def test_milliseconds_header_takes_plain_digits_only(value: str) -> None:
    assert parse_milliseconds(value) is None


# Whitespace str.strip() removes that HTTP's optional whitespace (space, tab) does not include.
UNICODE_SPACES = [c for c in map(chr, range(0x80, 0x3001)) if c.isspace()]


@given(
    st.integers(min_value=0, max_value=10**9),
    st.sampled_from(UNICODE_SPACES),
    st.sampled_from(["before", "after"]),
)
@example(700, "\xa0", "before")  # the reported case: "\xa0700" read as 700 ms
def test_deadline_parser_rejects_non_ascii_whitespace(
    milliseconds: int, space: str, where: str
) -> None:
    value = f"{space}{milliseconds}" if where == "before" else f"{milliseconds}{space}"
    assert parse_milliseconds(value) is None
    assert parse_grpc_timeout(f"{space}{milliseconds % 10**8}m") is None
    assert parse_milliseconds(f" \t{milliseconds}\t ") == pytest.approx(milliseconds / 1000)
