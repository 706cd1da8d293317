from starlette.responses import PlainTextResponse, Response

from request_aborted import CancellationToken, OperationCancelled


async def render(token: CancellationToken) -> str:
    token.raise_if_cancellation_requested()
    return "report"


async def answer(token: CancellationToken) -> Response:
    try:
        return PlainTextResponse(await render(token))
    except OperationCancelled:  # deliberate: the edge answers 499
        return Response(status_code=499)
