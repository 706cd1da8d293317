import asyncio

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from request_aborted import CancellationToken, CancellationTokenSource
from request_aborted.sqlalchemy import cancellable, install_cancellation


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


engine = create_async_engine("sqlite+aiosqlite:///:memory:")  # or postgresql+asyncpg://...
install_cancellation(engine)  # once per engine, at startup


async def search(session: AsyncSession, q: str, token: CancellationToken) -> list[Item]:
    async with cancellable(session, token):  # AsyncSession or AsyncConnection
        return list(await session.scalars(select(Item).where(Item.name.ilike(q))))


async def main() -> None:
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    async with AsyncSession(engine) as session:
        session.add_all([Item(name="amber lamp"), Item(name="oak desk")])
        await session.commit()
        with CancellationTokenSource(timeout=5) as source:  # a request's token, in an app
            print([item.name for item in await search(session, "%amber%", source.token)])


if __name__ == "__main__":
    asyncio.run(main())
