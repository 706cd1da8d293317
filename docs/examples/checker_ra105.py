from request_aborted import CancellationToken, CancellationTokenSource


async def work(token: CancellationToken) -> None:
    token.raise_if_cancellation_requested()


def with_deadline(token: CancellationToken) -> CancellationToken:
    source = CancellationTokenSource.linked(token, timeout=5.0)  # RA105
    return source.token


async def fixed(token: CancellationToken) -> None:
    with CancellationTokenSource.linked(token, timeout=5.0) as source:
        await work(source.token)
