import httpx

from request_aborted.httpx import CancellableTransport

client = httpx.AsyncClient(transport=CancellableTransport(httpx.AsyncHTTPTransport(retries=2)))
