"""The demo's configuration, read once from the environment.

Every knob has a default that makes ``uvicorn app.main:app`` work on a fresh clone: an SQLite file
under ``./data``, seeded on first start, and a recommendations upstream started in-process. Docker
Compose and the tests override what they need through the same variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings"]

DEFAULT_DATA_DIR = Path("data")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the composition root needs; build it with ``Settings.from_env()``."""

    database_url: str = f"sqlite+aiosqlite:///{DEFAULT_DATA_DIR / 'demo.db'}"
    db_pool_size: int = 5
    db_pool_timeout: float = 30.0
    """How long a request waits for a pooled connection before it is answered 503 (overload)."""
    seed_rows: int | None = None
    """Sales rows to seed an empty database with; ``None`` picks a size that suits the dialect."""
    recommender_url: str | None = None
    """``None`` starts the recommendations upstream in-process on a free port."""
    recommender_latency_ms: tuple[float, float] = (50.0, 150.0)
    recommendations_timeout: float = 1.0
    request_timeout: float | None = 10.0
    report_timeout: float | None = 30.0
    transfer_timeout: float | None = 300.0
    """Streamed exports and uploads, which take as long as the network does."""
    min_send_rate: tuple[float, float] | None = (16384.0, 5.0)
    """A client reading a response slower than this many bytes/s, after this many seconds'
    grace, is cut (``ClientTooSlow``): a stalled export reader no longer holds its pooled
    connection for the whole ``TRANSFER_TIMEOUT``."""
    min_receive_rate: tuple[float, float] | None = (16384.0, 5.0)
    """The same for request bodies (uploads, orders): a trickled body is answered 408."""
    honor_cancellation: bool = True
    """``False`` makes every handler pass ``CancellationToken.NONE`` down: benchmarks only."""
    shutdown_grace: float = 5.0
    data_sync_interval: float = 300.0
    commit_grace: float = 5.0
    upload_dir: Path = DEFAULT_DATA_DIR / "uploads"
    upload_max_bytes: int = 50 * 1024 * 1024
    debug_events: bool = False
    """``DEMO_DEBUG=1`` exposes ``GET /debug/events``, which the end-to-end tests read."""
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the ``DATABASE_URL``, ``RECOMMENDER_URL``, ``*_TIMEOUT``... variables."""
        env = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            database_url=env.get("DATABASE_URL") or defaults.database_url,
            db_pool_size=_int(env, "DB_POOL_SIZE", defaults.db_pool_size),
            db_pool_timeout=_float(env, "DB_POOL_TIMEOUT", defaults.db_pool_timeout),
            seed_rows=_optional_int(env, "SEED_ROWS"),
            recommender_url=env.get("RECOMMENDER_URL") or None,
            recommender_latency_ms=_range(env, "RECOMMENDER_LATENCY_MS", (50.0, 150.0)),
            recommendations_timeout=_float(
                env, "RECOMMENDATIONS_TIMEOUT", defaults.recommendations_timeout
            ),
            request_timeout=_seconds(env, "REQUEST_TIMEOUT", defaults.request_timeout),
            report_timeout=_seconds(env, "REPORT_TIMEOUT", defaults.report_timeout),
            transfer_timeout=_seconds(env, "TRANSFER_TIMEOUT", defaults.transfer_timeout),
            min_send_rate=_rate(env, "MIN_SEND_RATE", defaults.min_send_rate),
            min_receive_rate=_rate(env, "MIN_RECEIVE_RATE", defaults.min_receive_rate),
            honor_cancellation=_flag(env, "HONOR_CANCELLATION", True),
            shutdown_grace=_float(env, "SHUTDOWN_GRACE", defaults.shutdown_grace),
            data_sync_interval=_float(env, "DATA_SYNC_INTERVAL", defaults.data_sync_interval),
            commit_grace=_float(env, "COMMIT_GRACE", defaults.commit_grace),
            upload_dir=Path(env.get("UPLOAD_DIR") or defaults.upload_dir),
            upload_max_bytes=_int(env, "UPLOAD_MAX_BYTES", defaults.upload_max_bytes),
            debug_events=_flag(env, "DEMO_DEBUG", False),
            log_level=env.get("LOG_LEVEL", defaults.log_level).upper(),
        )


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = _optional_int(env, name)
    return default if value is None else value


def _optional_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if not value:
        return None
    try:
        return int(value.replace("_", ""))
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {value!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {value!r}") from None


def _seconds(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    """A timeout: seconds, or ``0``/``none`` to switch it off."""
    value = env.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("0", "none", "off"):
        return None
    return _float(env, name, 0.0)


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 1 or 0, not {value!r}")


def _range(env: Mapping[str, str], name: str, default: tuple[float, float]) -> tuple[float, float]:
    """``"50-150"`` -> ``(50.0, 150.0)``; a single number means a fixed value."""
    value = env.get(name)
    if not value:
        return default
    low, _, high = value.partition("-")
    try:
        return float(low), float(high or low)
    except ValueError:
        raise ValueError(f"{name} must look like 50-150 (milliseconds), not {value!r}") from None


def _rate(
    env: Mapping[str, str], name: str, default: tuple[float, float] | None
) -> tuple[float, float] | None:
    """``"16384/5"`` -> 16,384 bytes/s after 5 s of grace; ``0``/``off`` switches it off."""
    value = env.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("0", "none", "off"):
        return None
    rate, _, grace = value.partition("/")
    try:
        parsed = float(rate), float(grace or 5)
    except ValueError:
        parsed = (0.0, -1.0)
    if not (parsed[0] > 0 and parsed[1] >= 0):
        raise ValueError(f"{name} must look like 16384/5 (bytes/s, grace seconds), not {value!r}")
    return parsed
