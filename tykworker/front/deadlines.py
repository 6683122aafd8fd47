"""The front's call deadlines: one timer for all calls, not one per call (sans-IO).

The front arms each routed call's deadline (router.py ``Arm``) and disarms it when the
router is done with the call. One event-loop timer per call cost ~2 µs a call (a timer
handle made, pushed and cancelled); here a call's deadline is one entry in a heap, and the
front keeps a single timer for the earliest one (front/core.py).

A call that ends is not looked for in the heap: its entry stays until its deadline comes
up, where ``due`` skips it because the caller no longer counts it live (``is_live``). So
that finished calls cannot pile up (rate x timeout entries, 30 s of them at thousands of
calls a second), ``add`` rebuilds the heap from the live entries when the dead ones
outnumber them: the heap never holds more than ``max(COMPACT_FROM, 2 x live + 1)``
entries, and each rebuild costs as many steps as calls ended since the last one.

Invariant: every deadline added for a call that is still live when its time comes is
returned by ``due`` exactly once (a call id is added once: the router arms a call once).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Final

#: Below this many entries the heap is never rebuilt.
COMPACT_FROM: Final = 1024


class Deadlines:
    """Call deadlines (monotonic seconds) by call id; ``is_live(call_id)`` tells whether
    a call still wants its deadline (the front: it has not been answered)."""

    __slots__ = ("_heap", "_is_live")

    def __init__(self, is_live: Callable[[int], bool]) -> None:
        self._heap: list[tuple[float, int]] = []
        self._is_live = is_live

    def __len__(self) -> int:
        """Entries held, live or not (bounded: see the module docstring)."""
        return len(self._heap)

    def add(self, deadline: float, call_id: int, live: int) -> bool:
        """Arm ``call_id`` at ``deadline``; ``live`` is how many calls are live now.
        Returns True when it is the earliest deadline held (the timer must move)."""
        heap = self._heap
        if len(heap) >= COMPACT_FROM and len(heap) > 2 * live:
            is_live = self._is_live
            heap[:] = [entry for entry in heap if is_live(entry[1])]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, call_id))
        return heap[0][1] == call_id

    def due(self, now: float) -> list[int]:
        """The live calls whose deadline is at or before ``now``, earliest first; they
        (and the dead entries before ``now``) leave the heap."""
        heap, is_live = self._heap, self._is_live
        expired: list[int] = []
        while heap and heap[0][0] <= now:
            call_id = heapq.heappop(heap)[1]
            if is_live(call_id):
                expired.append(call_id)
        return expired

    def earliest(self) -> float | None:
        """The earliest deadline of a live call (dead entries in front of it are dropped),
        or None when no live call has one."""
        heap, is_live = self._heap, self._is_live
        while heap and not is_live(heap[0][1]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None
