"""The demo: a layered Starlette app that threads the request's token down to the database.

Read it top-down: ``main`` (composition root) -> ``routes`` (thin handlers) -> ``services``
(use cases, where the token is linked or set aside) -> ``repositories`` (queries, each bound to
the token). ``upstream`` is the recommendations service the search calls over HTTP.
"""
