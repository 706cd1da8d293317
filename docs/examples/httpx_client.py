import os

from request_aborted import CancellationToken
from request_aborted.httpx import cancellable_client

UPSTREAM = os.environ.get("RECOMMENDATIONS_URL", "http://recommendations:8000")
client = cancellable_client(base_url=UPSTREAM, timeout=10)


async def recommendations(user: int, token: CancellationToken) -> list[str]:
    response = await client.get(f"/for/{user}", extensions={"token": token})  # or current_token()
    response.raise_for_status()
    names: list[str] = response.json()
    return names
