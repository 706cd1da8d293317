from dataclasses import dataclass

from request_aborted import CancellationToken


@dataclass
class Order:
    id: int


class OrderRepository:
    async def save(self, order: Order, token: CancellationToken) -> None:
        token.raise_if_cancellation_requested()


repo = OrderRepository()


async def checkout(order: Order, token: CancellationToken) -> None:
    token.raise_if_cancellation_requested()
    await repo.save(order, CancellationToken.NONE)  # RA103
