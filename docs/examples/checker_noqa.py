from request_aborted import CancellationToken


async def legacy_fetch(query: str, token: CancellationToken = CancellationToken.NONE) -> str:
    token.raise_if_cancellation_requested()
    return query


async def search(query: str, token: CancellationToken) -> None:
    token.raise_if_cancellation_requested()
    await legacy_fetch(query)  # noqa: RA101
    await legacy_fetch(query)  # request-aborted: ignore[RA101]
    await legacy_fetch(query)  # noqa (every code on this line)
