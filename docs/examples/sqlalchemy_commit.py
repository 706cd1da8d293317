import asyncio

from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from request_aborted import CancellationToken, CancellationTokenSource
from request_aborted.sqlalchemy import cancellable


class Base(DeclarativeBase):
    pass


class Capture(Base):
    __tablename__ = "captures"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int]
    cents: Mapped[int]


async def capture_payment(session: AsyncSession, order_id: int, cents: int,
                          token: CancellationToken) -> None:  # fmt: skip
    async with token.critical_section(grace=5) as inner, cancellable(session, inner):
        session.add(Capture(order_id=order_id, cents=cents))
        await session.commit()  # runs even if the client left; stops 5 s after the token fired


async def main() -> None:
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    async with AsyncSession(engine) as session:
        with CancellationTokenSource() as source:
            source.cancel()  # the client has already left: the capture is still recorded
            await capture_payment(session, order_id=7, cents=1250, token=source.token)
        capture = await session.get(Capture, 1)
        print(capture and (capture.order_id, capture.cents))
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
