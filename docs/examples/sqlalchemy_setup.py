import os

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from request_aborted.sqlalchemy import install_cancellation

# postgresql+asyncpg://app@db/app in production; an embedded SQLite file or memory otherwise
engine = create_async_engine(os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///:memory:"))
install_cancellation(engine)  # once per engine, at startup
Session = async_sessionmaker(engine, expire_on_commit=False)
