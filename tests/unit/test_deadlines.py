"""The front's deadline set (front/deadlines.py): every live deadline is due once, in
order; finished calls neither come due nor pile up."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tykworker.front.deadlines import COMPACT_FROM, Deadlines


def test_due_returns_live_calls_past_their_deadline_in_order() -> None:
    live = {1, 2, 3}
    deadlines = Deadlines(live.__contains__)
    assert deadlines.add(5.0, 1, len(live)) is True  # the first is the earliest
    assert deadlines.add(7.0, 2, len(live)) is False
    assert deadlines.add(3.0, 3, len(live)) is True  # earlier than all: the timer moves
    assert deadlines.due(2.9) == []
    assert deadlines.due(5.0) == [3, 1]
    assert deadlines.earliest() == 7.0
    assert deadlines.due(100.0) == [2]
    assert deadlines.earliest() is None
    assert len(deadlines) == 0


def test_finished_calls_are_skipped_and_not_returned() -> None:
    live = {1, 2}
    deadlines = Deadlines(live.__contains__)
    deadlines.add(1.0, 1, 2)
    deadlines.add(2.0, 2, 2)
    live.discard(1)  # answered before its deadline
    assert deadlines.earliest() == 2.0  # the dead head is dropped
    assert deadlines.due(10.0) == [2]


def test_finished_calls_do_not_pile_up() -> None:
    """A call stuck at the head (30 s deadline) behind 100,000 answered ones: the heap
    stays near the live count, not the calls made."""
    live: set[int] = {0}
    deadlines = Deadlines(live.__contains__)
    deadlines.add(30.0, 0, 1)
    biggest = 0
    for call_id in range(1, 100_000):
        live.add(call_id)
        deadlines.add(30.0 + call_id * 1e-4, call_id, len(live))
        if call_id % 3:
            live.discard(call_id)  # most calls answer; a third stay in flight a while
        if len(live) > 50:
            live.difference_update(sorted(live)[1:-10])
        biggest = max(biggest, len(deadlines))
    assert biggest <= max(COMPACT_FROM, 2 * 60 + 1) + 1
    assert deadlines.earliest() == 30.0  # the stuck call is still armed
    assert deadlines.due(30.0) == [0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.booleans()), max_size=600), st.randoms())
def test_every_live_deadline_comes_due_exactly_once(
    calls: list[tuple[float, bool]], rng: random.Random
) -> None:
    live: set[int] = set()
    deadlines = Deadlines(live.__contains__)
    for call_id, (at, _) in enumerate(calls):
        live.add(call_id)
        deadlines.add(at, call_id, len(live))
        if rng.random() < 0.5:  # answers arrive in between
            finished = [c for c, (_, stays) in enumerate(calls[: call_id + 1]) if not stays]
            live.difference_update(finished)
    expected = sorted((calls[c][0], c) for c in live)
    got: list[int] = []
    for now in (25.0, 50.0, 75.0, 100.0):
        got += deadlines.due(now)
    assert got == [c for _, c in expected]
    assert deadlines.earliest() is None
