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

Async hooks: a worker names its ``async def`` hooks when it joins (``Lane.async_hooks``)
and runs up to ``Lane.capacity`` of their calls at once on its event loop, between its sync
calls. Such a call (by hook name: the Object is never parsed) goes, when nothing is queued,
to the newest-generation worker naming it that has room and holds no slow sync call
(fewest calls first), and is kept in ``Lane.tasks``, where replies may come in any order.
A sync call may go to a worker running async calls (preferring one running fewest): its
``Lane.calls`` is what it runs one at a time. A call the worker starts as a task though it
was sent as a sync one (an EVENT, whose handler name the front cannot read; a hook of a
bundle loaded after it joined) moves to ``tasks`` when the worker says so (``detach``),
and its hook name joins ``async_hooks``.

Deadlines of async calls: the timeout answer at once. If the worker's event loop has been
silent (no ``Alive`` heartbeat, ``Router.alive``) for ``LOOP_SILENCE`` seconds, since
before the call arrived, while no sync call runs there, the loop is blocked (a hook that
never awaits): the worker is ``lost`` at once (``Lost``: the supervisor dumps its stacks and
kills it). Otherwise ``Cancel`` (the front tells the worker to cancel the task, and arms
``overdue``): the worker acknowledges with a reply and stays in service; no
acknowledgement by then while no sync call runs there: lost too. A lost worker's calls get
their answers at their own deadlines or when its connection drops (crash answer),
whichever comes first.

Invariants (each is tested in tests/unit/test_router.py):
* Deadline rule: a call's deadline is its arrival plus the shorter of its hook type's
  timeout and the client's own (``grpc-timeout``); ``submit`` returns ``Arm`` with it
  unless the call was answered at once.
* A worker holds at most ``depth`` sync calls (``Lane.calls``, in the order sent; the
  first is the one running) and at most ``capacity`` async ones (``Lane.tasks``). Only
  workers that are connected, not draining and not lost are given calls; a draining
  worker's connection is closed once it holds neither.
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


@dataclass(slots=True, init=False)
class Call:
    """One Dispatch/DispatchEvent in flight. ``payload`` is never parsed here. (Made per
    call, like ``Assign``, ``Arm`` and ``Completed``: ``__init__`` written out, see
    tykworker/compiled.py.)"""

    call_id: int
    kind: int  # wire.frames.FrameKind.DISPATCH or EVENT
    payload: Payload
    hook_type: int
    hook_name: str
    arrived_at: float  # monotonic seconds
    deadline: float  # set by ``Router.submit``
    trace: bytes | None  # the propagation headers (wire.tracecontext carrier), if any
    sent_at: float  # traced calls: when last written to a worker (monotonic)

    def __init__(
        self,
        call_id: int,
        kind: int,
        payload: Payload,
        hook_type: int = 0,
        hook_name: str = "",
        arrived_at: float = 0.0,
        deadline: float = math.inf,
        trace: bytes | None = None,
        sent_at: float = 0.0,
    ) -> None:
        self.call_id = call_id
        self.kind = kind
        self.payload = payload
        self.hook_type = hook_type
        self.hook_name = hook_name
        self.arrived_at = arrived_at
        self.deadline = deadline
        self.trace = trace
        self.sent_at = sent_at


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
    async_hooks: frozenset[str] = frozenset()  # hook names it runs as async calls
    capacity: int = 1  # async calls it runs at once
    tasks: dict[int, Call] = field(default_factory=dict)  # async calls in flight
    cancelling: dict[int, Call] = field(default_factory=dict)  # cancelled, not acknowledged
    heard_at: float = 0.0  # its event loop's last heartbeat (front's monotonic clock)

    @property
    def call(self) -> Call | None:
        """The sync call running now, if any."""
        return self.calls[0] if self.calls else None

    @property
    def in_flight(self) -> int:
        """Calls sent to it and not answered by it."""
        return len(self.calls) + len(self.tasks)

    @property
    def is_available(self) -> bool:
        """May run a sync call now (async calls may be running)."""
        return not self.calls and not self.draining and not self.lost

    @property
    def is_open(self) -> bool:
        """May be sent more calls (busy or not)."""
        return not self.draining and not self.lost


@dataclass(slots=True, init=False)
class Assign:
    """Send ``call`` to the worker on ``conn_id``. (Not frozen, like ``Arm`` and
    ``Completed``, for a native ``__init__``; no one changes an action once made.)"""

    conn_id: int
    call: Call

    def __init__(self, conn_id: int, call: Call) -> None:
        self.conn_id = conn_id
        self.call = call


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer ``call`` on the worker's behalf with ``reason``. ``conn_id`` is the worker
    that held it (None if it was still queued); ``stuck``: that worker must be killed
    (the supervisor is told)."""

    call: Call
    reason: Reason
    conn_id: int | None = None
    stuck: bool = False


@dataclass(slots=True, init=False)
class Completed:
    """The worker on ``conn_id`` replied ``reply`` to ``call``; forward it."""

    call: Call
    conn_id: int
    reply: Payload

    def __init__(self, call: Call, conn_id: int, reply: Payload) -> None:
        self.call = call
        self.conn_id = conn_id
        self.reply = reply


@dataclass(slots=True, init=False)
class Arm:
    """Start ``call``'s deadline timer: call ``Router.expire`` at ``deadline`` (monotonic)."""

    call: Call
    deadline: float

    def __init__(self, call: Call, deadline: float) -> None:
        self.call = call
        self.deadline = deadline


@dataclass(frozen=True, slots=True)
class Cancel:
    """Tell the worker on ``conn_id`` to cancel async ``call`` (``send``; else only wait
    again), and call ``Router.overdue`` a grace period later."""

    conn_id: int
    call: Call
    send: bool = True


@dataclass(frozen=True, slots=True)
class Lost:
    """The worker on ``conn_id`` is past ``call``'s deadline with its event loop blocked
    (``silent``: no heartbeat for ``LOOP_SILENCE`` s; else: no answer to the cancel); the
    supervisor must kill it."""

    conn_id: int
    call: Call
    silent: bool = False


@dataclass(frozen=True, slots=True)
class Close:
    """Close the bridge connection ``conn_id`` (a draining worker finished)."""

    conn_id: int


Action = Assign | Answer | Completed | Close | Arm | Cancel | Lost


_SMOOTHING = 0.2  # weight of the newest service time in a hook's running average
#: Seconds without a heartbeat (wire.control.ALIVE_INTERVAL apart) after which a worker's
#: event loop counts as blocked at an async call's deadline.
LOOP_SILENCE = 0.5


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
    # Hook names some worker runs as async calls (the union of ``Lane.async_hooks``).
    async_names: frozenset[str] = frozenset()

    # --- events ---------------------------------------------------------------------
    def submit(
        self, call: Call, hook_timeout: float = math.inf, client_timeout: float | None = None
    ) -> list[Action]:
        """A new call arrived at ``call.arrived_at``; ``hook_timeout`` is its hook type's
        deadline, ``client_timeout`` the client's own (see ``deadline_of``)."""
        if not self.accepting:
            return [Answer(call, Reason.UNAVAILABLE)]
        if self.async_names and call.hook_name in self.async_names:
            return self._submit_async(call, hook_timeout, client_timeout)
        # Behind queued calls (an async one waiting for room may let a worker idle for
        # sync calls): queued too, calls are sent in arrival order.
        worker = None if self.queue else self._idle_worker()
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

    def _submit_async(
        self, call: Call, hook_timeout: float, client_timeout: float | None
    ) -> list[Action]:
        """``submit`` of a call some worker runs as an async one: to such a worker with
        room, else queued (never as a sync call to a worker that runs it async)."""
        worker = None if self.queue else self._async_worker(call)
        if worker is None and len(self.queue) >= self.queue_limit:
            return [Answer(call, Reason.OVERLOAD)]
        call.deadline = deadline_of(call.arrived_at, hook_timeout, client_timeout)
        if worker is None:
            self.queue.append(call)
            return [Arm(call, call.deadline)]
        return [Arm(call, call.deadline), self._assign_async(worker, call)]

    def join(self, worker: Lane, now: float = 0.0) -> list[Action]:
        """A worker connected at ``now`` and is ready to take calls."""
        self.workers[worker.conn_id] = worker
        if worker.async_hooks:
            self.async_names |= worker.async_hooks
        return self._feed(worker, now)

    def reply(
        self, conn_id: int, call_id: int, reply: Payload = b"", now: float = 0.0
    ) -> list[Action]:
        """The worker on ``conn_id`` answered ``call_id`` with ``reply`` at ``now``."""
        worker = self.workers.get(conn_id)
        if worker is None:
            return []
        if self.assigned.get(call_id) != conn_id:
            # Late reply to a call already answered (timeout), a cancel's acknowledgement,
            # or unknown.
            if worker.cancelling:
                worker.cancelling.pop(call_id, None)
            return []
        if worker.tasks:
            task = worker.tasks.pop(call_id, None)
            if task is not None:
                return self._completed_async(worker, task, reply, now)
        call = _take(worker.calls, call_id)
        del self.assigned[call_id]
        worker.served += 1
        self._observe(call, now - worker.started_at)
        worker.started_at = now
        worker.holds_slow = any(not self._is_fast(c) for c in worker.calls)
        actions: list[Action] = [Completed(call, conn_id, reply)]
        if worker.draining:
            if not worker.calls and not worker.tasks:
                actions.append(Close(conn_id))
        elif not worker.lost:
            actions.extend(self._feed(worker, now))
        return actions

    def detach(self, conn_id: int, call_id: int, now: float = 0.0) -> list[Action]:
        """The worker on ``conn_id`` runs ``call_id``, sent as a sync call, as an async
        one: it moves to ``tasks`` (even past ``capacity``: it runs already), and the
        worker may be sent more."""
        worker = self.workers.get(conn_id)
        if worker is None or self.assigned.get(call_id) != conn_id or call_id in worker.tasks:
            return []
        call = _take(worker.calls, call_id)
        worker.tasks[call_id] = call
        if call.hook_name and call.hook_name not in worker.async_hooks:
            worker.async_hooks |= {call.hook_name}
            self.async_names |= {call.hook_name}
        worker.started_at = now
        worker.holds_slow = any(not self._is_fast(c) for c in worker.calls)
        if worker.draining or worker.lost:
            return []
        return self._feed(worker, now)

    def drain(self, conn_id: int) -> list[Action]:
        """The worker asked for no more calls (recycling, SIGTERM, reload)."""
        worker = self.workers.get(conn_id)
        if worker is None:
            return []
        worker.draining = True
        return [] if worker.calls or worker.tasks else [Close(conn_id)]

    def leave(self, conn_id: int) -> list[Action]:
        """The connection closed (worker exited, crashed or was killed): the running call
        gets the crash answer, calls it had not started are routed again."""
        worker = self.workers.pop(conn_id, None)
        if worker is None:
            return []
        if worker.async_hooks:
            self._recount_async_names()
        actions: list[Action] = []
        for task in worker.tasks.values():  # all of them had started
            del self.assigned[task.call_id]
            actions.append(Answer(task, Reason.CRASH, conn_id))
        worker.tasks.clear()
        if not worker.calls:
            return actions
        call = worker.calls.popleft()
        del self.assigned[call.call_id]
        actions.append(Answer(call, Reason.CRASH, conn_id))
        return actions + self._requeue(worker)

    def expire(self, call_id: int, now: float = 0.0) -> list[Action]:
        """The call's deadline passed (at ``now``): the timeout answer. A running call's
        worker is lost (it must be killed) and its unstarted calls are routed again; a call
        that waited behind another leaves the worker in service (its late reply is
        ignored). An async call: see the module docstring."""
        conn_id = self.assigned.pop(call_id, None)
        if conn_id is not None:
            worker = self.workers[conn_id]
            task = worker.tasks.pop(call_id, None)
            if task is not None:
                return self._expire_async(worker, task, now)
            running = worker.calls[0].call_id == call_id
            call = _take(worker.calls, call_id)
            actions: list[Action] = [Answer(call, Reason.TIMEOUT, conn_id, stuck=running)]
            if running:
                worker.lost = True
                actions += self._requeue(worker)
            return actions
        for call in self.queue:
            if call.call_id == call_id:
                self.queue.remove(call)
                return [Answer(call, Reason.TIMEOUT)]
        return []

    def alive(self, conn_id: int, now: float) -> None:
        """The worker on ``conn_id`` sent its heartbeat at ``now``."""
        worker = self.workers.get(conn_id)
        if worker is not None:
            worker.heard_at = now

    def _expire_async(self, worker: Lane, task: Call, now: float) -> list[Action]:
        answer = Answer(task, Reason.TIMEOUT, worker.conn_id)
        if worker.lost:
            return [answer]
        if not worker.calls and now - max(worker.heard_at, task.arrived_at) > LOOP_SILENCE:
            worker.cancelling.clear()
            worker.lost = True
            return [answer, Lost(worker.conn_id, task, silent=True), *self._requeue(worker)]
        worker.cancelling[task.call_id] = task  # the worker goes on; its loop must answer
        return [answer, Cancel(worker.conn_id, task)]

    def overdue(self, conn_id: int, call_id: int) -> list[Action]:
        """The grace period after ``Cancel`` passed. Acknowledged (or the worker is gone,
        or already lost): nothing. A sync call running there (the loop is busy with it,
        and its own deadline guards it): wait again. Else the worker is lost."""
        worker = self.workers.get(conn_id)
        if worker is None or worker.lost:
            return []
        call = worker.cancelling.get(call_id)
        if call is None:
            return []
        if worker.calls:
            return [Cancel(conn_id, call, send=False)]
        worker.cancelling.clear()
        worker.lost = True
        return [Lost(conn_id, call), *self._requeue(worker)]

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
        if self.async_names:  # then the one running fewest async calls
            for worker in self.workers.values():
                if worker.is_available and (
                    best is None
                    or worker.generation > best.generation
                    or (
                        worker.generation == best.generation and len(worker.tasks) < len(best.tasks)
                    )
                ):
                    best = worker
            return best
        for worker in self.workers.values():
            if worker.is_available and (best is None or worker.generation > best.generation):
                best = worker
        return best

    def _async_worker(self, call: Call) -> Lane | None:
        """The worker to run async ``call`` now: open, naming its hook, with room, and
        holding no slow sync call; newest generation, then fewest calls, first."""
        best: Lane | None = None
        for worker in self.workers.values():
            if (
                worker.is_open
                and call.hook_name in worker.async_hooks
                and len(worker.tasks) < worker.capacity
                and not worker.holds_slow
                and (
                    best is None
                    or worker.generation > best.generation
                    or (worker.generation == best.generation and worker.in_flight < best.in_flight)
                )
            ):
                best = worker
        return best

    def _assign_async(self, worker: Lane, call: Call) -> Assign:
        worker.tasks[call.call_id] = call
        self.assigned[call.call_id] = worker.conn_id
        return Assign(worker.conn_id, call)

    def _completed_async(
        self, worker: Lane, call: Call, reply: Payload, now: float
    ) -> list[Action]:
        del self.assigned[call.call_id]
        worker.served += 1
        actions: list[Action] = [Completed(call, worker.conn_id, reply)]
        if worker.draining:
            if not worker.calls and not worker.tasks:
                actions.append(Close(worker.conn_id))
        elif not worker.lost:
            actions.extend(self._feed(worker, now))
        return actions

    def _recount_async_names(self) -> None:
        names: set[str] = set()
        for worker in self.workers.values():
            names |= worker.async_hooks
        self.async_names = frozenset(names)

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
            head = self.queue[0]
            if head.hook_name in worker.async_hooks:
                if len(worker.tasks) >= worker.capacity or worker.holds_slow:
                    break
                actions.append(self._assign_async(worker, self.queue.popleft()))
                continue
            if worker.calls and (
                worker.holds_slow or len(worker.calls) >= self.depth or not self._is_fast(head)
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
