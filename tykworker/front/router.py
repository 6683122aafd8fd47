"""Pure call routing: which worker takes which call, the bounded queue, and answers owed.

No I/O and no clock of its own: the front feeds events (a call arrived, a worker joined,
replied, asked to drain, disappeared, a deadline fired) and executes the returned actions.
Each worker is seen through its ``Lane`` (one bridge connection).

Pipelining: a worker runs one call at a time, but may be *sent* up to ``depth`` calls,
which it runs in order and answers in one write (worker/loop.py): under load no process
sleeps between calls. Fairness rules keep a call from waiting behind a slow one:

* an idle worker is always preferred; a busy one gets more only when none is idle;
* only *fast* calls are pipelined: a hook name whose recent service time (an average kept
  here from the replies, ``now`` given by the front) is at most ``fast_limit`` seconds. A
  hook never seen yet counts as slow. A slow call goes only to an idle worker, and a worker
  holding one gets nothing more until it is done.

Invariants (each is tested in tests/unit/test_router.py):
* Deadline rule: a call's deadline is its arrival plus the shorter of its hook type's
  timeout and the client's own (``grpc-timeout``); ``submit`` returns ``Arm`` with it
  unless the call was answered at once.
* A worker holds at most ``depth`` calls (``Lane.calls``, in the order sent; the first is
  the one running). Only workers that are connected, not draining and not lost are given
  calls.
* Every submitted call leaves the router exactly once, through exactly one of:
  ``Assign`` then ``Completed`` (reply), or ``Answer`` (overload, timeout, crash,
  unavailable). Late replies for calls already answered are ignored.
* Calls are sent in arrival order; the queue never holds more than ``queue_limit`` calls.
* A worker whose running call timed out is ``lost``: it gets no more calls and the
  supervisor kills it; the calls it held but had not started go back to the head of the
  queue (like those of a worker that crashed), in their order.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from tykworker.wire.frames import Payload
from tykworker.wire.reasons import Reason


@dataclass(slots=True)
class Call:
    """One Dispatch/DispatchEvent in flight. ``payload`` is never parsed here."""

    call_id: int
    kind: int  # wire.frames.FrameKind.DISPATCH or EVENT
    payload: Payload
    hook_type: int = 0
    hook_name: str = ""
    arrived_at: float = 0.0  # monotonic seconds
    deadline: float = math.inf  # set by ``Router.submit``
    trace: bytes | None = None  # the propagation headers (wire.tracecontext carrier), if any
    sent_at: float = 0.0  # traced calls: when last written to a worker (monotonic)


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
    calls: deque[Call] = field(default_factory=deque)  # sent, in order; [0] is running
    draining: bool = False
    lost: bool = False
    served: int = 0
    started_at: float = 0.0  # when calls[0] started (front's monotonic clock)
    holds_slow: bool = False  # a slow call is among ``calls``: send nothing more

    @property
    def call(self) -> Call | None:
        """The call running now, if any."""
        return self.calls[0] if self.calls else None

    @property
    def is_available(self) -> bool:
        return not self.calls and not self.draining and not self.lost

    @property
    def is_open(self) -> bool:
        """May be sent more calls (busy or not)."""
        return not self.draining and not self.lost


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
    reply: Payload


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


_SMOOTHING = 0.2  # weight of the newest service time in a hook's running average


@dataclass(slots=True)
class Router:
    queue_limit: int
    depth: int = 1  # calls a worker may be sent at once (1: no pipelining)
    fast_limit: float = 0.002  # seconds: hooks averaging at most this are pipelined
    workers: dict[int, Lane] = field(default_factory=dict)
    queue: deque[Call] = field(default_factory=deque)
    # call_id -> conn_id for assigned calls; queued calls are found in ``queue``.
    assigned: dict[int, int] = field(default_factory=dict)
    accepting: bool = True
    # (hook type, hook name) -> running average of service time, seconds.
    service: dict[tuple[int, str], float] = field(default_factory=dict)

    # --- events ---------------------------------------------------------------------
    def submit(
        self, call: Call, hook_timeout: float = math.inf, client_timeout: float | None = None
    ) -> list[Action]:
        """A new call arrived at ``call.arrived_at``; ``hook_timeout`` is its hook type's
        deadline, ``client_timeout`` the client's own (see ``deadline_of``)."""
        if not self.accepting:
            return [Answer(call, Reason.UNAVAILABLE)]
        worker = self._idle_worker()
        if worker is None and not self.queue and self.depth > 1 and self._is_fast(call):
            worker = self._open_worker()
        if worker is None and len(self.queue) >= self.queue_limit:
            return [Answer(call, Reason.OVERLOAD)]
        call.deadline = deadline_of(call.arrived_at, hook_timeout, client_timeout)
        actions: list[Action] = [Arm(call, call.deadline)]
        if worker is not None:
            actions.append(self._assign(worker, call, call.arrived_at))
        else:
            self.queue.append(call)
        return actions

    def join(self, worker: Lane, now: float = 0.0) -> list[Action]:
        """A worker connected at ``now`` and is ready to take calls."""
        self.workers[worker.conn_id] = worker
        return self._feed(worker, now)

    def reply(
        self, conn_id: int, call_id: int, reply: Payload = b"", now: float = 0.0
    ) -> list[Action]:
        """The worker on ``conn_id`` answered ``call_id`` with ``reply`` at ``now``."""
        worker = self.workers.get(conn_id)
        if worker is None or self.assigned.get(call_id) != conn_id:
            return []  # late reply to a call already answered (timeout) or unknown
        call = _take(worker.calls, call_id)
        del self.assigned[call_id]
        worker.served += 1
        self._observe(call, now - worker.started_at)
        worker.started_at = now
        worker.holds_slow = any(not self._is_fast(c) for c in worker.calls)
        actions: list[Action] = [Completed(call, conn_id, reply)]
        if worker.draining:
            if not worker.calls:
                actions.append(Close(conn_id))
        elif not worker.lost:
            actions.extend(self._feed(worker, now))
        return actions

    def drain(self, conn_id: int) -> list[Action]:
        """The worker asked for no more calls (recycling, SIGTERM, reload)."""
        worker = self.workers.get(conn_id)
        if worker is None:
            return []
        worker.draining = True
        return [] if worker.calls else [Close(conn_id)]

    def leave(self, conn_id: int) -> list[Action]:
        """The connection closed (worker exited, crashed or was killed): the running call
        gets the crash answer, calls it had not started are routed again."""
        worker = self.workers.pop(conn_id, None)
        if worker is None or not worker.calls:
            return []
        call = worker.calls.popleft()
        del self.assigned[call.call_id]
        actions: list[Action] = [Answer(call, Reason.CRASH, conn_id)]
        return actions + self._requeue(worker)

    def expire(self, call_id: int) -> list[Action]:
        """The call's deadline passed: the timeout answer. A running call's worker is lost
        (it must be killed) and its unstarted calls are routed again; a call that waited
        behind another leaves the worker in service (its late reply is ignored)."""
        conn_id = self.assigned.pop(call_id, None)
        if conn_id is not None:
            worker = self.workers[conn_id]
            running = worker.calls[0].call_id == call_id
            call = _take(worker.calls, call_id)
            actions: list[Action] = [Answer(call, Reason.TIMEOUT, conn_id)]
            if running:
                worker.lost = True
                actions += self._requeue(worker)
            return actions
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

    def _open_worker(self) -> Lane | None:
        """The busy worker with the fewest calls that may be sent one more fast call."""
        best: Lane | None = None
        for worker in self.workers.values():
            if (
                worker.is_open
                and not worker.holds_slow
                and len(worker.calls) < self.depth
                and (best is None or len(worker.calls) < len(best.calls))
            ):
                best = worker
        return best

    def _is_fast(self, call: Call) -> bool:
        average = self.service.get((call.hook_type, call.hook_name))
        return average is not None and average <= self.fast_limit

    def _observe(self, call: Call, seconds: float) -> None:
        key = (call.hook_type, call.hook_name)
        average = self.service.get(key)
        if average is None:
            if len(self.service) >= _MAX_TRACKED:  # hook names come from clients
                self.service.clear()
            self.service[key] = seconds
        else:
            self.service[key] = average + _SMOOTHING * (seconds - average)

    def _assign(self, worker: Lane, call: Call, now: float) -> Assign:
        if not worker.calls:
            worker.started_at = now
        worker.calls.append(call)
        if not self._is_fast(call):
            worker.holds_slow = True
        self.assigned[call.call_id] = worker.conn_id
        return Assign(worker.conn_id, call)

    def _feed(self, worker: Lane, now: float) -> list[Action]:
        """Send queued calls to ``worker``: one if it is idle, then fast ones up to
        ``depth`` (in queue order: stop at the first call it may not take)."""
        actions: list[Action] = []
        while self.queue and worker.is_open:
            if worker.calls and (
                worker.holds_slow
                or len(worker.calls) >= self.depth
                or not self._is_fast(self.queue[0])
            ):
                break
            actions.append(self._assign(worker, self.queue.popleft(), now))
        return actions

    def _requeue(self, worker: Lane) -> list[Action]:
        """Calls ``worker`` held but never started go back to the head of the queue, in
        order, and to other workers at once if some are idle."""
        calls = list(worker.calls)
        worker.calls.clear()
        worker.holds_slow = False
        for call in calls:
            del self.assigned[call.call_id]
        self.queue.extendleft(reversed(calls))
        actions: list[Action] = []
        for other in self.workers.values():
            if other is not worker and other.is_available:
                actions += self._feed(other, worker.started_at)
        return actions


_MAX_TRACKED = 4096  # hook names whose service time is kept


def _take(calls: deque[Call], call_id: int) -> Call:
    """Remove and return the call ``call_id`` from ``calls`` (usually the first)."""
    if calls[0].call_id == call_id:
        return calls.popleft()
    for call in calls:
        if call.call_id == call_id:
            calls.remove(call)
            return call
    raise KeyError(call_id)
