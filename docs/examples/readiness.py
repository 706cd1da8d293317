from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from request_aborted import ApplicationLifetime, Readiness, RequestAbortedMiddleware

lifetime = ApplicationLifetime(grace=20, drain_delay=5)
app = Starlette(
    routes=[Route("/readyz", Readiness())],  # finds the lifetime in the lifespan state
    middleware=[Middleware(RequestAbortedMiddleware)],
    lifespan=lifetime.lifespan(),
)
