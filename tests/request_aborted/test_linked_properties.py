"""Properties of trees of linked sources, checked by hypothesis over random trees and histories.

The properties, stated precisely:

1. *First cancel wins.* In a tree that is built before anything fires and never closed, a source
   is cancelled iff ``cancel()`` was called on it or on one of its ancestors, and its reason is
   the reason of the *earliest* such call (in time order, whatever the depth).
2. *Reference model.* With closes and late links mixed in, the tree behaves exactly like this
   model: ``cancel(r)`` on a source that has not fired gives it reason ``r`` and does the same,
   recursively, to every child that is still linked to it; a fired or closed child is no longer
   linked to any parent; a source created with ``linked()`` while one of its parents has already
   fired starts fired, with the reason of the first such parent in argument order (the first
   fired parent it observes), and links to nobody.
   And from that model: a live source has exactly one registration per (child, parent occurrence)
   link that is still live, and a fired source has none.
3. *Deadlines.* A linked source's deadline is the earliest of its own timer and its parents'
   deadlines: never later than any parent's, and ``None`` only when no source on the way up has a
   timer.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from request_aborted import CancellationTokenSource


class Reason(Exception):
    """A distinct reason per ``cancel()`` call, so that the reason tells which call won."""

    def __init__(self, when: int, target: int) -> None:
        super().__init__(when, target)
        self.when = when
        self.target = target


# Each source after the first lists its parents as indices of earlier sources (no cycles).
trees = st.integers(min_value=1, max_value=12).flatmap(
    lambda size: st.tuples(
        *[st.just(())]
        + [
            st.lists(st.integers(0, index - 1), min_size=1, max_size=3).map(tuple)
            for index in range(1, size)
        ]
    )
)


def ancestors_or_self(parents: tuple[tuple[int, ...], ...], node: int) -> set[int]:
    found, todo = set(), [node]
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo.extend(parents[current])
    return found


@settings(max_examples=300, deadline=None)
@given(data=st.data(), parents=trees)
def test_linked_tree_reason_is_the_earliest_cancel_among_self_and_ancestors(
    data: st.DataObject, parents: tuple[tuple[int, ...], ...]
) -> None:
    sources: list[CancellationTokenSource] = []
    for own_parents in parents:
        if own_parents:
            tokens = [sources[p].token for p in own_parents]
            sources.append(CancellationTokenSource.linked(*tokens))
        else:
            sources.append(CancellationTokenSource())

    # Cancel calls in random order, repeats allowed (a repeat is a later, losing call).
    targets = data.draw(st.lists(st.integers(0, len(parents) - 1), max_size=2 * len(parents)))
    calls = [Reason(when, target) for when, target in enumerate(targets)]
    for reason in calls:
        sources[reason.target].cancel(reason)

    for node, source in enumerate(sources):
        family = ancestors_or_self(parents, node)
        relevant = [reason for reason in calls if reason.target in family]
        if relevant:
            assert source.token.is_cancellation_requested
            assert source.token.reason is relevant[0]  # calls are in time order
        else:
            assert not source.token.is_cancellation_requested
            assert source.token.reason is None
        assert source.registrations == 0 or not source.token.is_cancellation_requested


@dataclass
class Node:
    """The reference model of one source."""

    parents: list[int] = field(default_factory=list)  # one entry per live registration
    reason: BaseException | None = None


class LinkedTreeMachine(RuleBasedStateMachine):
    """Random histories of new roots, new linked sources, cancels and closes."""

    sources = Bundle("sources")

    def __init__(self) -> None:
        super().__init__()
        self.real: list[CancellationTokenSource] = []
        self.model: list[Node] = []
        self.clock = 0
        self.ever_parents: list[set[int]] = []  # every ancestor link, closed or not
        self.calls: dict[int, set[int]] = {}  # node -> ids of Reason objects cancel()ed on it

    def _add(self, source: CancellationTokenSource, node: Node, parents: list[int]) -> int:
        self.real.append(source)
        self.model.append(node)
        self.ever_parents.append(set(parents))
        return len(self.real) - 1

    @rule(target=sources)
    def new_root(self) -> int:
        return self._add(CancellationTokenSource(), Node(), [])

    @rule(target=sources, parents=st.lists(sources, min_size=1, max_size=3))
    def new_linked(self, parents: list[int]) -> int:
        source = CancellationTokenSource.linked(*(self.real[p].token for p in parents))
        node = Node()
        for parent in parents:
            if self.model[parent].reason is not None:
                node.reason = self.model[parent].reason
                break
        if node.reason is None:
            node.parents = list(parents)
        return self._add(source, node, parents)

    @rule(node=sources)
    def cancel(self, node: int) -> None:
        self.clock += 1
        reason = Reason(self.clock, node)
        self.calls.setdefault(node, set()).add(id(reason))
        self.real[node].cancel(reason)
        self._fire(node, reason)

    @rule(node=sources)
    def close(self, node: int) -> None:
        self.real[node].close()
        self.model[node].parents = []

    def _fire(self, node: int, reason: BaseException) -> None:
        todo = [node]
        while todo:
            current = todo.pop()
            model = self.model[current]
            if model.reason is not None:
                continue
            model.reason = reason
            model.parents = []
            todo.extend(child for child, other in enumerate(self.model) if current in other.parents)

    @invariant()
    def matches_the_reference_model(self) -> None:
        for source, node in zip(self.real, self.model, strict=True):
            assert source.token.is_cancellation_requested == (node.reason is not None)
            assert source.token.reason is node.reason

    @invariant()
    def registrations_are_exactly_the_live_links(self) -> None:
        for index, source in enumerate(self.real):
            expected = sum(node.parents.count(index) for node in self.model)
            assert source.registrations == expected
            if source.token.is_cancellation_requested:
                assert source.registrations == 0

    @invariant()
    def every_reason_comes_from_a_cancel_on_self_or_an_ancestor(self) -> None:
        for index, source in enumerate(self.real):
            reason = source.token.reason
            if reason is None:
                continue
            family, todo = set(), [index]
            while todo:
                current = todo.pop()
                if current not in family:
                    family.add(current)
                    todo.extend(self.ever_parents[current])
            assert any(id(reason) in self.calls.get(member, ()) for member in family)

    @invariant()
    def a_child_still_linked_to_a_parent_means_neither_has_fired(self) -> None:
        # Equivalently: once a parent fires, no child stays linked to it without having fired.
        for index, node in enumerate(self.model):
            for parent in node.parents:
                assert not self.real[parent].token.is_cancellation_requested
                assert not self.real[index].token.is_cancellation_requested


def test_linked_tree_behaves_like_the_reference_model_with_closes_and_late_links() -> None:
    run_state_machine_as_test(
        LinkedTreeMachine,
        settings=settings(max_examples=200, stateful_step_count=40, deadline=None),
    )


timeouts = st.one_of(st.none(), st.floats(min_value=100, max_value=10_000))


@settings(max_examples=100, deadline=None)
@given(parents=trees, data=st.data())
def test_linked_tree_deadline_is_the_earliest_timer_on_the_way_up(
    parents: tuple[tuple[int, ...], ...], data: st.DataObject
) -> None:
    own = data.draw(st.lists(timeouts, min_size=len(parents), max_size=len(parents)))

    async def main() -> None:
        sources: list[CancellationTokenSource] = []
        # Each own deadline lies between (time before creation + timeout) and (time after + ...).
        bounds: list[tuple[float, float] | None] = []
        for own_parents, timeout in zip(parents, own, strict=True):
            before = time.monotonic()
            tokens = [sources[p].token for p in own_parents]
            sources.append(CancellationTokenSource.linked(*tokens, timeout=timeout))
            after = time.monotonic()
            bounds.append(None if timeout is None else (before + timeout, after + timeout))

        for node, source in enumerate(sources):
            deadline = source.token.deadline
            for parent in parents[node]:
                theirs = sources[parent].token.deadline
                if theirs is not None:
                    assert deadline is not None and deadline <= theirs
            family = [b for n in ancestors_or_self(parents, node) if (b := bounds[n]) is not None]
            if not family:
                assert deadline is None
                continue
            assert deadline is not None
            low = min(low for low, _ in family)
            high = min(high for _, high in family)
            assert low <= deadline <= high
            now = time.monotonic()
            remaining = source.token.remaining()
            assert remaining is not None and 0 < remaining <= deadline - now
        for source in sources:
            source.close()

    asyncio.run(main())
