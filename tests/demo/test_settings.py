"""Settings come from the environment; a typo there fails at startup with the variable's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings


def test_defaults_run_the_demo_on_a_fresh_clone() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite+aiosqlite:///data/demo.db"
    assert settings.recommender_url is None  # the upstream starts in-process
    assert settings.honor_cancellation is True
    assert (settings.request_timeout, settings.report_timeout) == (10.0, 30.0)


def test_environment_overrides() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql+asyncpg://demo@db/demo",
            "DB_POOL_SIZE": "20",
            "DB_POOL_TIMEOUT": "2.5",
            "MIN_SEND_RATE": "1000/2",
            "MIN_RECEIVE_RATE": "off",
            "SEED_ROWS": "1_000_000",
            "RECOMMENDER_URL": "http://upstream:8001",
            "RECOMMENDER_LATENCY_MS": "10-20",
            "REQUEST_TIMEOUT": "0",
            "REPORT_TIMEOUT": "2.5",
            "HONOR_CANCELLATION": "0",
            "UPLOAD_DIR": "/tmp/up",
        }
    )
    assert settings.database_url == "postgresql+asyncpg://demo@db/demo"
    assert (settings.db_pool_size, settings.seed_rows) == (20, 1_000_000)
    assert settings.db_pool_timeout == 2.5
    assert (settings.min_send_rate, settings.min_receive_rate) == ((1000.0, 2.0), None)
    assert settings.recommender_url == "http://upstream:8001"
    assert settings.recommender_latency_ms == (10.0, 20.0)
    assert (settings.request_timeout, settings.report_timeout) == (None, 2.5)
    assert settings.honor_cancellation is False
    assert settings.upload_dir == Path("/tmp/up")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DB_POOL_SIZE", "ten", "DB_POOL_SIZE must be a whole number"),
        ("MIN_SEND_RATE", "fast/5", "MIN_SEND_RATE must look like 16384/5"),
        ("MIN_RECEIVE_RATE", "-5", "MIN_RECEIVE_RATE must look like 16384/5"),
        ("REPORT_TIMEOUT", "soon", "REPORT_TIMEOUT must be a number of seconds"),
        ("HONOR_CANCELLATION", "maybe", "HONOR_CANCELLATION must be 1 or 0"),
        ("RECOMMENDER_LATENCY_MS", "fast", "RECOMMENDER_LATENCY_MS must look like 50-150"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env({name: value})
