from request_aborted import CancellationToken, OperationCancelled


async def fetch(token: CancellationToken) -> str:
    token.raise_if_cancellation_requested()
    return "data"


async def fetch_or_none(token: CancellationToken) -> str | None:
    try:
        return await fetch(token)
    except OperationCancelled:  # RA104
        return None
