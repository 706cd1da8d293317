from dataclasses import dataclass

from request_aborted import CancellationToken


@dataclass
class Product:
    name: str


class ProductRepository:
    async def find(self, query: str, token: CancellationToken) -> list[Product]:
        token.raise_if_cancellation_requested()
        return [Product(query)]


class SearchService:
    def __init__(self, repository: ProductRepository) -> None:
        self._repository = repository

    async def search(self, query: str, token: CancellationToken) -> list[Product]:
        return await self._repository.find(query)  # RA101
        return await self._repository.find(query, token)  # fixed
