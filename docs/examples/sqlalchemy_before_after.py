import asyncio

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from request_aborted import CancellationToken, CancellationTokenSource
from request_aborted.sqlalchemy import cancellable


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


# Before: the client left 200 ms ago; the database keeps scanning for another 29.8 seconds.
async def search_before(session: AsyncSession, q: str) -> list[Item]:
    return list(await session.scalars(select(Item).where(Item.name.ilike(f"%{q}%"))))


# After: the statement is cancelled on the server as soon as the token fires.
async def search(session: AsyncSession, q: str, token: CancellationToken) -> list[Item]:
    async with cancellable(session, token):
        return list(await session.scalars(select(Item).where(Item.name.ilike(f"%{q}%"))))


async def main() -> None:
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    async with AsyncSession(engine) as session:
        session.add_all([Item(name="amber lamp"), Item(name="oak desk")])
        await session.commit()
        print([item.name for item in await search_before(session, "oak")])
        with CancellationTokenSource(timeout=5) as source:
            print([item.name for item in await search(session, "amber", source.token)])
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
