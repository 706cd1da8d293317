from request_aborted import CancellationToken


class Database:
    async def fetch(self, query: str) -> list[str]:
        return [query]


db = Database()


async def search(query: str, token: CancellationToken) -> list[str]:  # RA102
    return await db.fetch(query)
