"""The abort line's way out: through the user's logging when configured, else a fallback once.

Each test builds a logger outside the logging module's hierarchy (``logging.Logger(name)``), so
pytest's own capture handlers on the root logger do not count as "configured".
"""

from __future__ import annotations

import logging

import pytest

from request_aborted._log import AbortLog

MESSAGE = ("%s %s aborted after %.3fs: %s (%d)", "GET", "/x", 1.5, "ClientDisconnected", 499)


def emit(log: AbortLog, level: int = logging.INFO) -> None:
    log.log(level, *MESSAGE, extra={"status": 499})


def test_with_no_handler_anywhere_the_line_goes_to_stderr_like_uvicorns_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    emit(AbortLog(logging.Logger("request_aborted")))

    assert capsys.readouterr().err == (
        "INFO:     request_aborted: GET /x aborted after 1.500s: ClientDisconnected (499)\n"
    )


def test_a_configured_handler_gets_the_line_once_and_the_fallback_stays_silent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger = logging.Logger("request_aborted")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)

    emit(AbortLog(logger))

    assert [r.getMessage() for r in records] == [
        "GET /x aborted after 1.500s: ClientDisconnected (499)"
    ]
    assert records[0].status == 499  # the structured fields travel with the record
    assert capsys.readouterr().err == ""


def test_logging_configured_after_the_middleware_was_built_takes_over(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger = logging.Logger("request_aborted")
    log = AbortLog(logger)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)

    emit(log)

    assert len(records) == 1
    assert capsys.readouterr().err == ""


def test_the_fallback_respects_the_loggers_own_level_and_shows_info_by_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    quiet = logging.Logger("request_aborted", level=logging.WARNING)
    emit(AbortLog(quiet), logging.INFO)
    emit(AbortLog(logging.Logger("request_aborted")), logging.DEBUG)
    assert capsys.readouterr().err == ""

    emit(AbortLog(quiet), logging.WARNING)
    assert capsys.readouterr().err.startswith("WARNING:  request_aborted: GET /x")


def test_a_disabled_logger_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.Logger("request_aborted")
    logger.disabled = True

    emit(AbortLog(logger))

    assert capsys.readouterr().err == ""
