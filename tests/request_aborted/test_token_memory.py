"""A long-lived source must not grow with the short-lived work that links to it.

The middleware links a per-request source to the server's long-lived shutdown source, and a
handler registers callbacks on its request token; both happen millions of times in a process's
life. Closing the child or unregistering the callback must give everything back: the parent's
registration count returns to zero and the process's memory stays flat.
"""

from __future__ import annotations

import gc

import psutil

from request_aborted import CancellationTokenSource

WARM_UP = 10_000
ROUNDS = 1_000_000
# RSS moves by a page here and there (allocator arenas, the interpreter's own caches); a leak of
# even 8 bytes per round would show up as 8 MB.
ALLOWED_GROWTH = 5 * 1024 * 1024


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def test_token_memory_a_million_closed_linked_children_leave_the_parent_as_it_was() -> None:
    parent = CancellationTokenSource()
    token = parent.token
    linked = CancellationTokenSource.linked
    for _ in range(WARM_UP):
        with linked(token):
            pass
    before = rss()

    for _ in range(ROUNDS):
        with linked(token):
            pass

    growth = rss() - before
    assert parent.registrations == 0
    assert growth < ALLOWED_GROWTH, f"RSS grew by {growth / 1e6:.1f} MB"
    # The parent still works: links made afterwards still fire.
    child = linked(token)
    parent.cancel()
    assert child.token.is_cancellation_requested


def test_token_memory_a_million_register_unregister_pairs_leave_the_source_as_it_was() -> None:
    source = CancellationTokenSource()
    token = source.token
    calls: list[BaseException] = []
    callback = calls.append
    for _ in range(WARM_UP):
        token.register(callback).unregister()
    before = rss()

    for _ in range(ROUNDS):
        with token.register(callback):
            pass

    growth = rss() - before
    assert source.registrations == 0
    assert growth < ALLOWED_GROWTH, f"RSS grew by {growth / 1e6:.1f} MB"
    source.cancel()
    assert calls == []  # none of the million callbacks survived its unregistration


def test_token_memory_children_that_are_never_closed_are_what_registrations_counts() -> None:
    # The counterpart that shows the check above can fail: forgotten children stay registered.
    parent = CancellationTokenSource()
    forgotten = [CancellationTokenSource.linked(parent.token) for _ in range(1000)]
    assert parent.registrations == 1000
    for child in forgotten:
        child.close()
    assert parent.registrations == 0
