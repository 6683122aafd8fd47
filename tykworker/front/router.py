"""Pure call routing: which worker takes which call, the bounded queue, and answers owed.

No I/O and no clock of its own: the front feeds events (a call arrived, a worker joined,
replied, asked to drain, disappeared, a deadline fired) and executes the returned actions.
Each worker is seen through its ``Lane`` (one bridge connection).

Invariants (each is tested in tests/unit/test_router.py):
* Deadline rule: a call's deadline is its arrival plus the shorter of its hook type's
  timeout and the client's own (``grpc-timeout``); ``submit`` returns ``Arm`` with it
  unless the call was answered at once.
* A worker holds at most one call (``Lane.call``). Only workers that are connected, not
  draining and not lost are given calls.
* Every submitted call leaves the router exactly once, through exactly one of:
  ``Assign`` then ``Completed`` (reply), or ``Answer`` (overload, timeout, crash,
  unavailable). Late replies for calls already answered are ignored.
* Calls are served in arrival order; the queue never holds more than ``queue_limit`` calls.
* A worker whose call timed out is ``lost``: it gets no more calls; the supervisor kills it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from tykworker.wire.reasons import Reason


@dataclass(slots=True)
class Call:
    """One Dispatch/DispatchEvent in flight. ``payload`` is never parsed here."""

    call_id: int
    kind: int  # wire.frames.FrameKind.DISPATCH or EVENT
    payload: bytes
    hook_type: int = 0
    hook_name: str = ""
    arrived_at: float = 0.0  # monotonic seconds
    deadline: float = math.inf  # set by ``Router.submit``


def deadline_of(arrived_at: float, hook_timeout: float, client_timeout: float | None) -> float:
    """When a call that arrived at ``arrived_at`` must be answered: the shorter of its hook
    type's timeout and the client's ``grpc-timeout`` (None: the client set none) wins."""
    limit = hook_timeout if client_timeout is None else min(hook_timeout, client_timeout)
    return arrived_at + limit


@dataclass(slots=True)
class Lane:
    """The router's view of one worker, through its bridge connection ``conn_id``."""

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
    """The worker on ``conn_id`` replied ``reply`` to ``call``; forward it."""

    call: Call
    conn_id: int
    reply: bytes


@dataclass(frozen=True, slots=True)
class Arm:
    """Start ``call``'s deadline timer: call ``Router.expire`` at ``deadline`` (monotonic)."""

    call: Call
    deadline: float


@dataclass(frozen=True, slots=True)
class Close:
    """Close the bridge connection ``conn_id`` (a draining worker finished)."""

    conn_id: int


Action = Assign | Answer | Completed | Close | Arm


@dataclass(slots=True)
class Router:
    queue_limit: int
    workers: dict[int, Lane] = field(default_factory=dict)
    queue: deque[Call] = field(default_factory=deque)
    # call_id -> conn_id for assigned calls; queued calls are found in ``queue``.
    assigned: dict[int, int] = field(default_factory=dict)
    accepting: bool = True

    # --- events ---------------------------------------------------------------------
    def submit(
        self, call: Call, hook_timeout: float = math.inf, client_timeout: float | None = None
    ) -> list[Action]:
        """A new call arrived at ``call.arrived_at``; ``hook_timeout`` is its hook type's
        deadline, ``client_timeout`` the client's own (see ``deadline_of``)."""
        if not self.accepting:
            return [Answer(call, Reason.UNAVAILABLE)]
        worker = self._idle_worker()
        if worker is None and len(self.queue) >= self.queue_limit:
            return [Answer(call, Reason.OVERLOAD)]
        call.deadline = deadline_of(call.arrived_at, hook_timeout, client_timeout)
        actions: list[Action] = [Arm(call, call.deadline)]
        if worker is not None:
            actions.append(self._assign(worker, call))
        else:
            self.queue.append(call)
        return actions

    def join(self, worker: Lane) -> list[Action]:
        """A worker connected and is ready to take calls."""
        self.workers[worker.conn_id] = worker
        return self._feed(worker)

    def reply(self, conn_id: int, call_id: int, reply: bytes = b"") -> list[Action]:
        """The worker on ``conn_id`` answered ``call_id`` with ``reply``."""
        worker = self.workers.get(conn_id)
        if worker is None or worker.call is None or worker.call.call_id != call_id:
            return []  # late reply to a call already answered (timeout) or unknown
        call = worker.call
        worker.call = None
        worker.served += 1
        del self.assigned[call_id]
        actions: list[Action] = [Completed(call, conn_id, reply)]
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
    def _idle_worker(self) -> Lane | None:
        # Newest generation first, so a reload shifts traffic as soon as new workers join.
        best: Lane | None = None
        for worker in self.workers.values():
            if worker.is_available and (best is None or worker.generation > best.generation):
                best = worker
        return best

    def _assign(self, worker: Lane, call: Call) -> Assign:
        worker.call = call
        self.assigned[call.call_id] = worker.conn_id
        return Assign(worker.conn_id, call)

    def _feed(self, worker: Lane) -> list[Action]:
        if worker.is_available and self.queue:
            return [self._assign(worker, self.queue.popleft())]
        return []
