"""``DATABASE_URL`` alone switches the demo to PgBouncer: the flag becomes driver settings."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.engine import make_url

from app.seed import seed
from repositories import Database
from repositories.pooling import pooler_options
from request_aborted import CancellationToken
from tests._fixtures.pgbouncer import PgBouncer
from tests._fixtures.postgres import PostgresDatabase


def test_pooling_plain_url_is_left_alone() -> None:
    options = pooler_options(make_url("postgresql+asyncpg://app@db/shop"))
    assert str(options.url) == "postgresql+asyncpg://app@db/shop"
    assert options.connect_args == {} and options.side_connection is True


def test_pooling_transaction_mode_turns_off_asyncpg_statement_caches() -> None:
    options = pooler_options(
        make_url("postgresql+asyncpg://app@db:6432/shop?pgbouncer=transaction")
    )
    assert str(options.url) == "postgresql+asyncpg://app@db:6432/shop"  # the driver never sees it
    assert options.connect_args["statement_cache_size"] == 0
    assert options.connect_args["prepared_statement_cache_size"] == 0
    name = options.connect_args["prepared_statement_name_func"]
    assert name() != name()  # no two clients can meet the same name on a server connection
    assert options.side_connection is False


def test_pooling_transaction_mode_turns_off_psycopg_prepared_statements() -> None:
    options = pooler_options(
        make_url("postgresql+psycopg://app@db:6432/shop?pgbouncer=transaction&sslmode=disable")
    )
    assert str(options.url) == "postgresql+psycopg://app@db:6432/shop?sslmode=disable"
    assert options.connect_args == {"prepare_threshold": None}
    assert options.side_connection is False


def test_pooling_session_mode_needs_only_the_cancel_path() -> None:
    options = pooler_options(make_url("postgresql+psycopg://app@db:6432/shop?pgbouncer=session"))
    assert options.connect_args == {} and options.side_connection is False


def test_pooling_unknown_mode_is_refused_with_the_variable_name() -> None:
    with pytest.raises(ValueError, match="DATABASE_URL: pgbouncer must be transaction or session"):
        pooler_options(make_url("postgresql+asyncpg://app@db/shop?pgbouncer=yes"))


@pytest.mark.postgres
@pytest.mark.parametrize("path", ["psycopg", "asyncpg-pgbouncer", "psycopg-pgbouncer"])
def test_pooling_seed_bulk_loads_through_every_path(
    path: str, postgres_db: PostgresDatabase, request: pytest.FixtureRequest
) -> None:
    """COPY through psycopg's ``cursor.copy()`` and through PgBouncer, as on a first start."""
    driver, _, via = path.partition("-")
    if via:
        bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
        url = bouncer.url(postgres_db.name, driver) + "?pgbouncer=transaction"
    else:
        url = postgres_db.server.url(postgres_db.name, driver)

    async def main() -> None:
        database = Database(url)
        try:
            await database.create_schema(CancellationToken.NONE)
            await seed(database, 2000, CancellationToken.NONE)
        finally:
            await database.dispose()

    asyncio.run(main())
    assert postgres_db.query("SELECT count(*) AS n FROM sales")[0]["n"] == 2000
