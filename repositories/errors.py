"""What the repositories say when the database cannot serve: one domain error, not driver codes.

Which driver errors mean "the database is not there for you right now" is storage knowledge:
SQLAlchemy's wrappers, asyncpg's ``OSError``\\ s, SQLSTATE classes. It stays here, and the layers
above see only ``DatabaseUnavailable`` (``app/problems.py`` answers it 503 with ``Retry-After``).
Every other driver error is left as it is: a bug, which the app answers 500.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

__all__ = ["DatabaseUnavailable", "translate_unavailable"]

# SQLSTATE classes that say "the server is not there for you right now": connection exceptions
# (08) and operator intervention (57: admin shutdown, cannot connect now, ...).
_UNAVAILABLE_SQLSTATE: Final = ("08", "57")


class DatabaseUnavailable(Exception):
    """Raised when the database is down, restarting or saturated: the caller may retry."""


@contextlib.contextmanager
def translate_unavailable() -> Iterator[None]:
    """Raise ``DatabaseUnavailable`` (from the driver's error) for what the block's I/O met."""
    try:
        yield
    except (ConnectionError, PoolTimeout, OperationalError, InterfaceError) as exc:
        # Connection refused or lost, pool exhausted: asyncpg's OSErrors, SQLAlchemy's wrappers.
        raise DatabaseUnavailable(_first_line(exc)) from exc
    except DBAPIError as exc:
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        if exc.connection_invalidated or sqlstate.startswith(_UNAVAILABLE_SQLSTATE):
            raise DatabaseUnavailable(_first_line(exc)) from exc
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
