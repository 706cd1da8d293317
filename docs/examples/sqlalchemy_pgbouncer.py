import uuid

from sqlalchemy.ext.asyncio import create_async_engine

from request_aborted.sqlalchemy import install_cancellation

# asyncpg: a fresh name for every statement, and no cache on either side
engine = create_async_engine(
    "postgresql+asyncpg://app@pgbouncer:6432/app",
    connect_args={
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__",
    },
)
# psycopg: prepare nothing server-side
psycopg_engine = create_async_engine(
    "postgresql+psycopg://app@pgbouncer:6432/app", connect_args={"prepare_threshold": None}
)
install_cancellation(engine)
install_cancellation(psycopg_engine, side_connection=False)  # optional: it finds PgBouncer itself
