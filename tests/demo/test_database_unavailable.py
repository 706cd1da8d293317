"""Which driver errors the repositories call ``DatabaseUnavailable`` (503), which stay bugs (500).

The end-to-end side (a PostgreSQL outage answered 503 with ``Retry-After``) is in
``tests/e2e/test_faults.py`` and ``tests/e2e/test_hostile.py``.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from repositories import Database, DatabaseUnavailable
from repositories.errors import translate_unavailable
from request_aborted import CancellationToken
from tests._fixtures.servers import free_port


class DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


def wrapped(sqlstate: str, *, invalidated: bool = False) -> DBAPIError:
    return DBAPIError("SELECT 1", None, DriverError(sqlstate), connection_invalidated=invalidated)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        PoolTimeout("QueuePool limit of size 5 overflow 5 reached"),
        OperationalError("SELECT 1", None, DriverError("")),
        InterfaceError("SELECT 1", None, DriverError("")),
        wrapped("57P01"),  # admin shutdown
        wrapped("08006"),  # connection failure
        wrapped("", invalidated=True),
    ],
    ids=["refused", "pool", "operational", "interface", "57P01", "08006", "invalidated"],
)
def test_a_database_that_cannot_serve_is_unavailable(error: Exception) -> None:
    with pytest.raises(DatabaseUnavailable) as raised, translate_unavailable():
        raise error

    assert raised.value.__cause__ is error
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "error",
    [wrapped("42P01"), IntegrityError("INSERT", None, DriverError("23505")), ValueError("bug")],
    ids=["undefined-table", "unique-violation", "not-a-driver-error"],
)
def test_any_other_error_is_left_as_it_is(error: Exception) -> None:
    with pytest.raises(type(error)) as raised, translate_unavailable():
        raise error

    assert raised.value is error


def test_a_unit_of_work_on_a_database_that_is_not_there_raises_unavailable() -> None:
    # Nothing listens on the port: the connection is refused, as when PostgreSQL is down.
    database = Database(f"postgresql+asyncpg://demo:demo@127.0.0.1:{free_port()}/demo")

    async def count() -> None:
        try:
            async with database.unit_of_work() as uow:
                await uow.sales.date_range(CancellationToken.NONE)
        finally:
            await database.dispose()

    with pytest.raises(DatabaseUnavailable):
        asyncio.run(count())
