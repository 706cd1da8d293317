from sqlalchemy.ext.asyncio import create_async_engine

from request_aborted.sqlalchemy import install_cancellation

engine = create_async_engine("postgresql+psycopg://app@db/app")  # connects on first use
install_cancellation(engine)
