"""Pure call routing: which worker takes which call, the bounded queue, and answers owed.

No I/O and no clock: the front feeds events (a call arrived, a worker joined, replied,
asked to drain, disappeared, a deadline fired) and executes the returned actions.

Invariants (each is tested in tests/unit/test_router.py):
* A worker holds at most one call (``Worker.call``). Only workers that are connected, not
  draining and not lost are given calls.
* Every submitted call leaves the router exactly once, through exactly one of:
  ``Assign`` then ``Completed`` (reply), or ``Answer`` (overload, timeout, crash,
  unavailable). Late replies for calls already answered are ignored.
* Calls are served in arrival order; the queue never holds more than ``queue_limit`` calls.
* A worker whose call timed out is ``lost``: it gets no more calls; the supervisor kills it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tykworker.wire.answers import Reason


@dataclass(slots=True)
class Call:
    """One Dispatch/DispatchEvent in flight. ``payload`` is never parsed here."""

    call_id: int
    kind: int  # protocol.FrameKind.DISPATCH or EVENT
    payload: bytes
    hook_type: int = 0
    hook_name: str = ""
    arrived_at: float = 0.0


@dataclass(slots=True)
class Worker:
    conn_id: int
    pid: int
    generation: int
    index: int
    call: Call | None = None
    draining: bool = False
    lost: bool = False
    served: int = 0

    @property
    def is_available(self) -> bool:
        return self.call is None and not self.draining and not self.lost


@dataclass(frozen=True, slots=True)
class Assign:
    """Send ``call`` to the worker on ``conn_id``."""

    conn_id: int
    call: Call


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer ``call`` on the worker's behalf with ``reason``. ``conn_id`` is the worker
    that held it (None if it was still queued)."""

    call: Call
    reason: Reason
    conn_id: int | None = None


@dataclass(frozen=True, slots=True)
class Completed:
    """The worker replied to ``call``; forward the reply."""

    call: Call
    conn_id: int


@dataclass(frozen=True, slots=True)
class Close:
    """Close the bridge connection ``conn_id`` (a draining worker finished)."""

    conn_id: int


Action = Assign | Answer | Completed | Close


@dataclass(slots=True)
class Router:
    queue_limit: int
    workers: dict[int, Worker] = field(default_factory=dict)
    queue: deque[Call] = field(default_factory=deque)
    # call_id -> conn_id for assigned calls; queued calls are found in ``queue``.
    assigned: dict[int, int] = field(default_factory=dict)
    accepting: bool = True

    # --- events ---------------------------------------------------------------------
    def submit(self, call: Call) -> list[Action]:
        """A new call arrived."""
        if not self.accepting:
            return [Answer(call, Reason.UNAVAILABLE)]
        worker = self._idle_worker()
        if worker is not None:
            return [self._assign(worker, call)]
        if len(self.queue) >= self.queue_limit:
            return [Answer(call, Reason.OVERLOAD)]
        self.queue.append(call)
        return []

    def join(self, worker: Worker) -> list[Action]:
        """A worker connected and is ready to take calls."""
        self.workers[worker.conn_id] = worker
        return self._feed(worker)

    def reply(self, conn_id: int, call_id: int) -> list[Action]:
        """The worker on ``conn_id`` answered ``call_id``."""
        worker = self.workers.get(conn_id)
        if worker is None or worker.call is None or worker.call.call_id != call_id:
            return []  # late reply to a call already answered (timeout) or unknown
        call = worker.call
        worker.call = None
        worker.served += 1
        del self.assigned[call_id]
        actions: list[Action] = [Completed(call, conn_id)]
        if worker.draining:
            actions.append(Close(conn_id))
        elif not worker.lost:
            actions.extend(self._feed(worker))
        return actions

    def drain(self, conn_id: int) -> list[Action]:
        """The worker asked for no more calls (recycling, SIGTERM, reload)."""
        worker = self.workers.get(conn_id)
        if worker is None:
            return []
        worker.draining = True
        return [] if worker.call is not None else [Close(conn_id)]

    def leave(self, conn_id: int) -> list[Action]:
        """The connection closed (worker exited, crashed or was killed)."""
        worker = self.workers.pop(conn_id, None)
        if worker is None or worker.call is None:
            return []
        call, worker.call = worker.call, None
        del self.assigned[call.call_id]
        return [Answer(call, Reason.CRASH, conn_id)]

    def expire(self, call_id: int) -> list[Action]:
        """The call's deadline passed. Queued -> timeout answer; assigned -> timeout answer
        and the worker is lost (it must be killed)."""
        conn_id = self.assigned.pop(call_id, None)
        if conn_id is not None:
            worker = self.workers[conn_id]
            assert worker.call is not None
            call, worker.call = worker.call, None
            worker.lost = True
            return [Answer(call, Reason.TIMEOUT, conn_id)]
        for call in self.queue:
            if call.call_id == call_id:
                self.queue.remove(call)
                return [Answer(call, Reason.TIMEOUT)]
        return []

    def stop_accepting(self) -> list[Action]:
        """Drain mode: new calls get UNAVAILABLE; queued calls still wait for workers."""
        self.accepting = False
        return []

    # --- queries --------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self.assigned) + len(self.queue)

    # --- internals ------------------------------------------------------------------
    def _idle_worker(self) -> Worker | None:
        # Newest generation first, so a reload shifts traffic as soon as new workers join.
        best: Worker | None = None
        for worker in self.workers.values():
            if worker.is_available and (best is None or worker.generation > best.generation):
                best = worker
        return best

    def _assign(self, worker: Worker, call: Call) -> Assign:
        worker.call = call
        self.assigned[call.call_id] = worker.conn_id
        return Assign(worker.conn_id, call)

    def _feed(self, worker: Worker) -> list[Action]:
        if worker.is_available and self.queue:
            return [self._assign(worker, self.queue.popleft())]
        return []
