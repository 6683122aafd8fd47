"""The front: terminates gRPC (and the raw socket) and routes each call to a worker.

Runs in its own process, forked by the supervisor; of the server's processes the only one
that may import grpc, and only with ``front = "grpcio"`` (the native front never does).
It never runs plugin code and never parses an Object (``peek_object_header`` only reads
the top-level hook type and name, for deadlines and logs).

Per call: ``router.submit`` -> frame to a worker over its bridge connection -> the
worker's REPLY is the gateway's answer. The deadline the router sets (router.py: the
shorter of the hook type's and the client's) is enforced by one timer for all calls, at
the earliest deadline (deadlines.py): on expiry
the gateway gets the timeout answer at once and the supervisor is told which worker is
stuck (it dumps the stacks and kills it). An async call past its deadline instead gets a
``Cancel`` sent to its worker, which must acknowledge it within ``CANCEL_GRACE``
seconds: else its event loop is blocked and the worker is reported stuck the same way
(at once, when its loop's heartbeats, ``Alive``, stopped before: router.py).
A bridge connection that drops answers its calls with the crash answer. See router.py
for the exactly-once invariants.

Observability (never on the call path unless enabled): the gRPC health service
(health.py) on the same socket; with the ``metrics`` setting, per-call statistics kept in
plain dicts and served for Prometheus (metrics.py). A worker announces a plugin error with
a CONTROL frame before its reply; the front counts it (``Counters.errors``, metrics).
Tracing (``tracing`` setting): a call whose server handed over its propagation headers
(``Call.trace``) goes to its worker in a DISPATCH_TRACED/EVENT_TRACED frame
(wire/tracecontext.py), the worker makes its span; a traced call answered here (timeout,
crash, overload) gets its span from this process (front/tracing.py). Calls without a trace
context cost one ``is None`` check more.

Retirement: when the supervisor announces a new generation (``Generation``), workers of
older ones are drained here (no new call, their connection closed once idle), whatever
their plugins did to SIGTERM.

Signals: SIGTERM = drain (stop taking calls, finish those accepted, exit 0; the bridge
listener is closed at once, and only this front's own socket files are removed at the
end); SIGQUIT/SIGINT = exit now. A front whose supervisor died (parent-death SIGTERM)
kills, after its drain, the workers still busy: nothing else would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from tykworker import compiled
from tykworker.config import HOOK_TYPES, Settings, apply_live_settings, live_settings
from tykworker.errors import ConfigError, ProtocolError, RemoteProtocolError
from tykworker.front.deadlines import Deadlines
from tykworker.front.health import Health, ServingStatus
from tykworker.front.native import start_native
from tykworker.front.raw import RawServer
from tykworker.front.router import (
    LOOP_SILENCE,
    Action,
    Answer,
    Arm,
    Assign,
    Call,
    Cancel,
    Close,
    Completed,
    Lane,
    Lost,
    Router,
)
from tykworker.front.tracing import FrontTracer
from tykworker.system import heap, proctitle, sockets
from tykworker.wire import answers, control, journal, tracecontext
from tykworker.wire.frames import (
    DIRECT_FROM,
    Frame,
    FrameDecoder,
    FrameKind,
    Payload,
    encode_header,
    peek_object_header,
)
from tykworker.wire.handoff import FrontSpec
from tykworker.wire.journal import JournalReader
from tykworker.wire.reasons import Reason
from tykworker.wire.scoreboard import Scoreboard

if TYPE_CHECKING:
    from tykworker.front.metrics import CallStats

log = logging.getLogger("tykworker.front")
calls_log = logging.getLogger("tykworker.calls")

_HOOK_NAMES = {number: name for name, number in HOOK_TYPES.items()}
Respond = Callable[[Payload], None]
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
#: Seconds a worker has to acknowledge the ``Cancel`` of an async call past its deadline
#: (a running event loop does so at once) before it counts as stuck.
CANCEL_GRACE = 0.5
#: A deadline this close (seconds) when the deadline timer fires counts as passed: the
#: event loop's timers have millisecond resolution and may fire a little early.
TIMER_SLACK = 0.001
#: Seconds without a new call after which the front gives the heap's free pages back
#: (system/heap.py: large calls keep them for reuse while calls flow).
IDLE_RELEASE = 5.0


class _Server(Protocol):
    """What the front needs of a public server (native HTTP/2, grpcio, raw)."""

    async def stop(self, grace: float) -> None: ...


@dataclass(slots=True)
class Counters:
    calls: int = 0
    timeouts: int = 0
    crashes: int = 0
    overloads: int = 0
    errors: int = 0


class Front:
    def __init__(self, settings: Settings, spec: FrontSpec) -> None:
        self.settings = settings
        self.timeouts = _timeouts_of(settings)
        self.spec = spec
        self.router = Router(
            queue_limit=settings.queue_size,
            depth=settings.pipeline_depth,
            fast_limit=settings.pipeline_fast_ms / 1000,
        )
        # Frames for workers, per bridge connection, written once per loop iteration.
        self.outbox: dict[int, list[Payload]] = {}
        self._flush_scheduled = False
        self._board_due = False  # ``_write_board`` is scheduled
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pending: dict[int, Respond] = {}  # calls not answered yet
        self.deadlines = Deadlines(self.pending.__contains__)
        self._timer: asyncio.TimerHandle | None = None  # at the earliest deadline
        self._timer_at = math.inf  # when it fires (monotonic)
        self.links: dict[int, asyncio.Transport] = {}  # bridge connection -> transport
        self.bridges: dict[int, _WorkerLink] = {}  # bridge connection -> its protocol
        self.members: dict[int, Lane] = {}  # bridge connection -> worker (for logs)
        self.ids = itertools.count(1)
        self.conn_ids = itertools.count(1)
        self.counters = Counters()
        self.board = Scoreboard.open(spec.scoreboard_path)
        self.stopping = asyncio.Event()
        self.fast = False
        self.unix_paths: list[str] = []
        self.health = Health(self.is_serving)
        self.stats: CallStats | None = None  # set when the metrics endpoint is on
        self.generation = 1  # the pool's current one, told by the supervisor
        self.parent = os.getppid()  # the supervisor; another parent: it is gone
        self.tracer: FrontTracer | None = None  # set in ``serve`` when tracing is on
        self._released_at = 0  # ``counters.calls`` when the heap was last given back

    # --- calls ----------------------------------------------------------------------
    def submit(
        self,
        kind: FrameKind,
        payload: Payload,
        deadline: float | None,
        respond: Respond,
        trace: bytes | None = None,
    ) -> None:
        """Route one call; ``respond`` is called exactly once with its answer, perhaps
        before this returns (overload). ``deadline``: the client's own, in seconds from now
        (``grpc-timeout``); the shorter of it and the hook type's wins. ``trace``: the
        call's propagation headers (a ``wire.tracecontext`` carrier; None without tracing
        or without a trace context), sent to its worker in a traced frame.

        The deadline timer stays armed until the router is done with the call, even if the
        client goes away: a worker hanging on it must still be detected and killed."""
        if kind == FrameKind.DISPATCH:
            hook_type, hook_name = peek_object_header(payload)
        else:
            hook_type, hook_name = 0, ""
        call = Call(
            next(self.ids), kind, payload, hook_type, hook_name, time.monotonic(), trace=trace
        )
        self.pending[call.call_id] = respond
        self.counters.calls += 1
        # ``Settings.timeout_for(_type_name(call))``, looked up in a table made with the
        # settings (an interpreted method and two maps per call otherwise).
        timeouts = self.timeouts
        hook_timeout = timeouts.get(call.hook_type if kind == FrameKind.DISPATCH else -1)
        if hook_timeout is None:
            hook_timeout = timeouts[HOOK_TYPES["pre"]]  # an unknown hook type: ``_type_name``
        self._apply(self.router.submit(call, hook_timeout, deadline))

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, looked up once (``asyncio.get_running_loop()`` costs a
        getpid() system call per lookup on 3.11). A Front lives in one loop."""
        self._loop = asyncio.get_running_loop()
        return self._loop

    def event_loop(self) -> asyncio.AbstractEventLoop:
        """The front's loop, bound at first use (``_bind_loop``): what the per-call path
        and its bridge links schedule on, without a system call."""
        return self._loop or self._bind_loop()

    async def call(
        self,
        kind: FrameKind,
        payload: Payload,
        deadline: float | None = None,
        trace: bytes | None = None,
    ) -> Payload:
        """``submit`` for coroutine callers (grpcio). Cancelling the awaiting task drops
        the answer, not the call."""
        future: asyncio.Future[Payload] = asyncio.get_running_loop().create_future()

        def respond(reply: Payload) -> None:
            if not future.done():
                future.set_result(reply)

        self.submit(kind, payload, deadline, respond, trace)
        return await future

    def _expire(self, call_id: int) -> None:
        # Its worker may have replied in a write not read yet, or in its journal (a batch
        # whose next call hangs): then the reply answers it, not the timeout.
        conn_id = self.router.assigned.get(call_id)
        link = self.bridges.get(conn_id) if conn_id is not None else None
        if link is not None:
            link.catch_up()
            if call_id not in self.pending:
                return
        self._apply(self.router.expire(call_id, time.monotonic()))

    def _arm(self, action: Arm) -> None:
        """Hold the call's deadline until it is answered (``pending``); move the one
        timer if this deadline comes first."""
        call_id = action.call.call_id
        if call_id in self.pending:
            first = self.deadlines.add(action.deadline, call_id, len(self.pending))
            if first and action.deadline < self._timer_at:
                self._set_timer(action.deadline)

    def _set_timer(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = self.event_loop()
        # The loop's clock has its own origin: a delay from now, on the monotonic clock.
        self._timer = loop.call_later(max(0.0, at - time.monotonic()), self._on_deadline)
        self._timer_at = at

    def _on_deadline(self) -> None:
        """The earliest deadline came: answer every call past its own (the loop's timers
        tick in milliseconds, hence ``TIMER_SLACK``), then wait for the next one."""
        self._timer, self._timer_at = None, math.inf
        for call_id in self.deadlines.due(time.monotonic() + TIMER_SLACK):
            if call_id in self.pending:  # an expiry before it may have answered it
                self._expire(call_id)
        at = self.deadlines.earliest()
        if at is not None and at < self._timer_at:
            self._set_timer(at)

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Assign):
                self._send(action.conn_id, action.call)
            elif isinstance(action, Arm):
                self._arm(action)
            elif isinstance(action, Completed):
                self._resolve(action.call, action.reply)
            elif isinstance(action, Answer):
                self._answer(action)
            elif isinstance(action, Close):
                link = self.links.pop(action.conn_id, None)
                if link is not None:
                    link.close()
            elif isinstance(action, Cancel):
                self._cancel(action)
            elif isinstance(action, Lost):
                why = (
                    f"has an event loop blocked for over {LOOP_SILENCE}s"
                    if action.silent
                    else "did not cancel its async call"
                )
                self._report_stuck(action.conn_id, action.call, why)
        if not self._board_due:  # the header's counters, once per loop iteration
            loop = self._loop
            if loop is None:
                try:
                    loop = self._bind_loop()
                except RuntimeError:  # driven without a loop (the bridge reader's tests)
                    self._write_board()
                    return
            self._board_due = True
            loop.call_soon(self._write_board)

    def _write_board(self) -> None:
        """Queue depth and calls into the scoreboard's header (``status``, health): the
        values at the end of the loop iteration, not after every call of it."""
        self._board_due = False
        self.board.write_header(queue_depth=len(self.router.queue), calls=self.counters.calls)

    def _send(self, conn_id: int, call: Call) -> None:
        """Queue ``call``'s frame for its worker; every frame queued in this loop iteration
        goes out in one write (``_flush``): a socket write and a wake-up of the worker are
        the front's main per-call costs."""
        if self.stats is not None:
            self.stats.observe_queue_wait(time.monotonic() - call.arrived_at)
        if call.trace is None:
            header = encode_header(call.kind, call.call_id, len(call.payload))
        else:
            header = _traced_header(call)
        parts = self.outbox.get(conn_id)
        if parts is None:
            parts = self.outbox[conn_id] = []
        parts += (header, call.payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.event_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self.outbox = self.outbox, {}
        for conn_id, parts in outbox.items():
            link = self.links.get(conn_id)
            if link is None:  # the worker left since: its calls were answered or rerouted
                continue
            if sum(map(len, parts)) >= 65536:  # large payloads: gathered, not copied
                link.writelines(parts)
            else:
                link.write(b"".join(parts))
            lane = self.router.workers.get(conn_id)
            if lane is not None and len(lane.calls) > 1:  # a batch: replies may wait in it
                bridge = self.bridges.get(conn_id)
                if bridge is not None:
                    bridge.watch()

    def _cancel(self, action: Cancel) -> None:
        """Tell the worker to cancel an async call past its deadline; check it did."""
        if action.send:
            frame = control.encode_frame_of(control.Cancel(), action.call.call_id)
            self._queue_frame(action.conn_id, frame)
        loop = self.event_loop()
        loop.call_later(CANCEL_GRACE, self._overdue, action.conn_id, action.call.call_id)

    def _overdue(self, conn_id: int, call_id: int) -> None:
        self._apply(self.router.overdue(conn_id, call_id))

    def _queue_frame(self, conn_id: int, frame: bytes) -> None:
        parts = self.outbox.get(conn_id)
        if parts is None:
            parts = self.outbox[conn_id] = []
        parts.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.event_loop().call_soon(self._flush)

    def _report_stuck(self, conn_id: int | None, call: Call, why: str) -> None:
        """The worker on ``conn_id`` must be killed: tell the supervisor."""
        member = self.members.get(conn_id) if conn_id else None
        if member is None:
            return
        self.health.notify()  # that worker is lost
        elapsed = time.monotonic() - call.arrived_at
        log.error(
            "worker pid %d %s (call %d hook %r, %.3fs): reporting it stuck",
            member.pid,
            why,
            call.call_id,
            call.hook_name,
            elapsed,
        )
        stuck = control.Stuck(os.getpid(), member.pid, call.call_id, call.hook_name, elapsed)
        if not control.report(self.spec.channel_fd, stuck):
            log.error("could not tell the supervisor that worker pid %d is stuck", member.pid)

    def _resolve(self, call: Call, reply: Payload) -> None:
        """The router is done with ``call``: deliver its one answer and disarm its
        deadline."""
        respond = self.pending.pop(call.call_id, None)  # its deadline: disarmed with it
        if respond is None:
            return
        if self.stats is not None:
            elapsed = time.monotonic() - call.arrived_at
            self.stats.observe_call(_type_name(call), call.hook_name, elapsed)
        respond(reply)

    def _answer(self, action: Answer) -> None:
        call, reason = action.call, action.reason
        hook = _type_name(call)
        if call.kind == FrameKind.DISPATCH:
            fail_open = hook in self.settings.fail_open
            reply = answers.failure_reply(call.payload, call.hook_type, reason, fail_open)
        else:
            reply = answers.event_reply(reason.code)
        self._count(reason)
        if self.stats is not None:
            self.stats.observe_answer(hook, call.hook_name, reason.code)
        member = self.members.get(action.conn_id) if action.conn_id else None
        pid = member.pid if member else None
        calls_log.warning(
            "call %d hook %r (%s) answered by tykworker: %s",
            call.call_id,
            call.hook_name,
            hook,
            reason.code,
            extra={
                "call_id": call.call_id,
                "hook": call.hook_name,
                "hook_type": hook,
                "worker_pid": pid,
                "generation": member.generation if member else None,
                "reason": reason.code,
                "elapsed": round(time.monotonic() - call.arrived_at, 6),
            },
        )
        if call.trace is not None and self.tracer is not None:
            worker = (member.pid, member.generation) if member else None
            self.tracer.answered(call, hook, reason.code, worker, time.monotonic())
        if action.stuck and pid is not None:
            self.health.notify()  # that worker is lost
            elapsed = time.monotonic() - call.arrived_at
            stuck = control.Stuck(os.getpid(), pid, call.call_id, call.hook_name, elapsed)
            if not control.report(self.spec.channel_fd, stuck):
                log.error("could not tell the supervisor that worker pid %d is stuck", pid)
        self._resolve(call, reply)

    def _count(self, reason: Reason) -> None:
        c = self.counters
        if reason is Reason.TIMEOUT:
            c.timeouts += 1
        elif reason is Reason.CRASH:
            c.crashes += 1
        elif reason in (Reason.OVERLOAD, Reason.UNAVAILABLE):
            c.overloads += 1
        self.board.write_header(
            calls=c.calls, timeouts=c.timeouts, crashes=c.crashes, overloads=c.overloads
        )

    # --- bridge (workers) -----------------------------------------------------------
    def worker_joined(self, conn_id: int, frame: Frame, link: asyncio.Transport) -> None:
        """The first frame of a bridge connection: HELLO, the worker is ready."""
        if frame.kind != FrameKind.HELLO:
            raise RemoteProtocolError(f"expected HELLO from a worker, got {frame.kind.name}")
        hello = control.decode(frame.payload)
        if not isinstance(hello, control.Hello):
            raise RemoteProtocolError(f"expected a hello from a worker, got {hello.op!r}")
        peer = _peer_pid(link)
        if peer is not None and peer != hello.pid:
            raise RemoteProtocolError(f"worker pid {peer} claims to be pid {hello.pid}")
        worker = Lane(
            conn_id,
            hello.pid,
            hello.generation,
            hello.index,
            async_hooks=frozenset(hello.async_hooks),
            capacity=hello.async_capacity,
        )
        self.links[conn_id] = link
        self.members[conn_id] = worker
        log.debug("worker pid %d generation %d joined", worker.pid, worker.generation)
        self._apply(self.router.join(worker, time.monotonic()))
        if worker.generation < self.generation:  # started just before a reload switched
            self._apply(self.router.drain(conn_id))
        self.health.notify()

    def _retire_older(self) -> None:
        """Drain the workers of generations older than the pool's current one, as if
        they had sent DRAIN (no new call; the connection closes once their call is done,
        and they exit at EOF): a reload retires them whatever their plugins did to
        SIGTERM, which the supervisor sends them too."""
        for conn_id, lane in list(self.router.workers.items()):
            if lane.generation < self.generation and not lane.draining:
                self._apply(self.router.drain(conn_id))

    def worker_left(self, conn_id: int) -> None:
        """The bridge connection closed: the call it held (if any) gets the crash answer."""
        self.links.pop(conn_id, None)
        self._apply(self.router.leave(conn_id))
        self.members.pop(conn_id, None)
        self.health.notify()

    def on_worker_frame(self, conn_id: int, frame: Frame) -> None:
        if frame.kind == FrameKind.REPLY:
            now = time.monotonic()
            self._apply(self.router.reply(conn_id, frame.call_id, frame.payload, now))
        elif frame.kind == FrameKind.DRAIN:
            self._apply(self.router.drain(conn_id))
            self.health.notify()
        elif frame.kind == FrameKind.CONTROL:
            self._on_worker_control(conn_id, frame)
        else:
            raise RemoteProtocolError(f"unexpected {frame.kind.name} frame from a worker")

    def _on_worker_control(self, conn_id: int, frame: Frame) -> None:
        """``Failed``: the plugin failed the call ``frame.call_id`` (its REPLY follows);
        ``Handler``: the handler name of that EVENT call (metrics label); ``Concurrent``:
        that call runs as an async one. Anything else is logged and dropped: the frame
        itself was well delimited."""
        try:
            message = control.decode(frame.payload)
        except ProtocolError as exc:
            log.warning("bridge connection %d: bad control message dropped: %s", conn_id, exc)
            return
        worker = self.router.workers.get(conn_id)
        if worker is None:
            return
        if isinstance(message, control.Alive):
            self.router.alive(conn_id, time.monotonic())
            return
        if isinstance(message, control.Concurrent):
            self._apply(self.router.detach(conn_id, frame.call_id, time.monotonic()))
            return
        call = worker.tasks.get(frame.call_id) or next(
            (c for c in worker.calls if c.call_id == frame.call_id), None
        )
        if call is None:
            return  # the call was already answered (timeout): it is counted there
        if isinstance(message, control.Handler):
            if call.kind == FrameKind.EVENT:
                call.hook_name = message.name
            return
        if not isinstance(message, control.Failed):
            return
        self.counters.errors += 1
        self.board.write_header(errors=self.counters.errors)
        if self.stats is not None:
            self.stats.observe_answer(_type_name(call), call.hook_name, message.reason)

    # --- health and metrics ---------------------------------------------------------
    def is_serving(self) -> bool:
        """Accepting calls, and a worker of the current (or a newer) generation can take
        them (health.py)."""
        if not self.router.accepting:
            return False
        return any(
            w.generation >= self.generation and not w.draining and not w.lost
            for w in self.router.workers.values()
        )

    async def _start_metrics(self) -> asyncio.AbstractServer | None:
        """The Prometheus endpoint, if configured. A bind failure is logged, not fatal:
        calls matter more than metrics."""
        if not self.settings.metrics:
            return None
        from tykworker.front import metrics

        def snapshot() -> metrics.Snapshot:
            serving = self.health.status("") is ServingStatus.SERVING
            return metrics.snapshot(self.router, self.board.header(), serving)

        try:
            endpoint = await metrics.start_endpoint(
                self.settings.metrics, self.settings.socket_mode, snapshot
            )
        except (OSError, ConfigError) as exc:
            log.error("metrics endpoint %s unavailable: %s", self.settings.metrics, exc)
            return None
        self.stats = endpoint.stats
        self.unix_paths.extend(endpoint.unix_paths)
        log.info("Prometheus metrics on %s", self.settings.metrics)
        return endpoint.server

    # --- serving --------------------------------------------------------------------
    async def _start_public(self) -> list[_Server]:
        """The gRPC server (native or grpcio) and the optional raw socket."""
        servers: list[_Server] = []
        if self.settings.front == "native":  # native.py: built-in HTTP/2 for unary calls
            native = await start_native(
                self.submit, self.settings, self.health, self.spec.grpc_sock
            )
            self.unix_paths.extend(native.unix_paths)
            servers.append(native)
        else:
            from tykworker.front.grpcio import start_grpcio  # grpc is imported only for this front

            grpcio, paths = await start_grpcio(self.call, self.settings, self.health)
            self.unix_paths.extend(paths)
            servers.append(grpcio)
        if self.settings.raw_socket:
            raw = RawServer(self.submit, self.settings)
            await raw.start(
                self.settings.raw_socket,
                self.settings.socket_mode,
                self.settings.socket_gid(),
                self.spec.raw_sock,
            )
            self.unix_paths.append(self.settings.raw_socket)
            servers.append(raw)
        return servers

    async def serve(self) -> None:
        self.tracer = FrontTracer.start(self.settings.tracing)  # in this process, after fork
        try:
            await self._serve()
        finally:
            if self.tracer is not None:
                self.tracer.close()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        for signum in (signal.SIGQUIT, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop_now)
        bridge = await loop.create_unix_server(
            lambda: _WorkerLink(self), sock=self.spec.bridge_sock
        )
        servers = await self._start_public()
        os.set_blocking(self.spec.channel_fd, False)  # a report never blocks a timer
        loop.add_reader(self.spec.channel_fd, self._read_config)
        metrics = await self._start_metrics()
        self.board.write_header(front_pid=os.getpid())
        if not control.report(self.spec.channel_fd, control.FrontReady(os.getpid())):
            log.error("could not tell the supervisor that the front is ready")
        log.info(
            "serving coprocess.Dispatcher on %s (%s)", self.settings.socket, compiled.describe()
        )
        paths = {path: sockets.path_identity(path) for path in self.unix_paths}
        loop.call_later(IDLE_RELEASE, self._release_when_idle, self.counters.calls)
        await self.stopping.wait()
        # No worker joins a stopping front; closed now, a new server can bind the bridge
        # path at once when the supervisor (which holds it too) is gone.
        bridge.close()
        await self._drain(servers)
        if metrics is not None:
            metrics.close()
        for link in list(self.links.values()):
            link.close()
        for path, identity in paths.items():  # not a new server's socket at the same path
            sockets.unlink_if_same(path, identity)
        if os.getppid() != self.parent:
            self._kill_orphaned_workers()

    def _release_when_idle(self, seen: int) -> None:
        """Each ``IDLE_RELEASE`` seconds: no call since the last look, but some since the
        heap was last given back -> give it back now (``heap.release``)."""
        calls = self.counters.calls
        if calls == seen and calls != self._released_at:
            self._released_at = calls
            heap.release()
        self._bind_loop().call_later(IDLE_RELEASE, self._release_when_idle, calls)

    def _kill_orphaned_workers(self) -> None:
        """The supervisor is gone (we were reparented), so nothing else ends a worker
        still running a call after the drain (a hook stuck in C never runs a SIGTERM
        handler): kill its process group. Idle workers exit at the EOF just sent."""
        for lane in list(self.members.values()):
            if lane.call is not None or lane.tasks or lane.lost:
                log.error("supervisor gone: killing worker pid %d, still busy", lane.pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(lane.pid, signal.SIGKILL)

    def _read_config(self) -> None:
        """New live settings from the supervisor (SIGHUP) on the front's channel:
        deadlines, fail-open and queue size apply to calls routed from now on. One datagram
        is one message; a bad one is logged and dropped."""
        for _ in range(16):
            try:
                data = os.read(self.spec.channel_fd, control.MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as exc:
                data = b""
                log.error("channel to the supervisor failed: %s", exc)
            if not data:  # the supervisor is gone; PDEATHSIG stops us
                asyncio.get_running_loop().remove_reader(self.spec.channel_fd)
                return
            self._on_supervisor(data)

    def _on_supervisor(self, datagram: bytes) -> None:
        try:
            message = control.decode_frame(datagram)
        except ProtocolError as exc:
            log.error("bad message from the supervisor dropped: %s", exc)
            return
        if isinstance(message, control.LiveSettings):
            self.settings = apply_live_settings(self.settings, message.values())
            self.timeouts = _timeouts_of(self.settings)
            self.router.queue_limit = self.settings.queue_size
            log.info("applied new live settings: %s", live_settings(self.settings))
        elif isinstance(message, control.Generation):
            self.generation = message.generation
            self._retire_older()
            self.health.notify()
        else:
            log.error("unexpected %r message from the supervisor dropped", message.op)

    def _stop_now(self) -> None:
        self.fast = True
        self.stopping.set()

    async def _drain(self, servers: list[_Server]) -> None:
        """Stop taking calls; give accepted calls until graceful_timeout to finish.
        Raw clients are told last, so that a call without a reply was never read."""
        grace = 0.0 if self.fast else self.settings.graceful_timeout
        self.router.stop_accepting()
        self.health.close()  # NOT_SERVING; Watch streams end so they do not hold the stop
        if not self.fast:
            log.info("draining %d call(s)", len(self.pending))
        deadline = time.monotonic() + grace
        for server in servers:
            await server.stop(max(0.0, deadline - time.monotonic()))


class _WorkerLink(asyncio.Protocol):
    """One bridge connection: decodes the worker's frames and hands them to the front.

    Invariant: every byte the worker wrote, or made and put in its reply journal
    (wire/journal.py), is read, once and in order, before the front hears that the
    connection is gone and before a call the worker holds gets its timeout answer (the
    front must know which calls the worker answered before it died or hung: the first
    unanswered one is the one that did it, the others never ran). A write to a worker
    that just died (calls sent ahead) makes the event loop close the transport at once,
    dropping replies still in the socket; so the link keeps a duplicate of the socket's
    descriptor and reads the rest from it (``catch_up``), then the journal's bytes that
    follow. Bytes read from the journal come through the socket again later (the worker
    writes its batch when the batch is done): ``received`` skips them.
    """

    def __init__(self, front: Front) -> None:
        self.front = front
        self.conn_id = next(front.conn_ids)
        self.decoder = FrameDecoder(front.settings.max_message_bytes, direct_from=DIRECT_FROM)
        self.transport: asyncio.Transport | None = None
        self.joined = False
        self.spare: int | None = None  # dup of the socket's fd, for the last bytes
        self.journal: JournalReader | None = None  # the worker's (``_give_journal``)
        self.watching = False  # ``_look`` is scheduled
        # How long the replies of a batch may wait in the journal behind a call of a
        # hook that was fast (front/router.py ``fast_limit``) and is not now.
        self.patience = max(front.settings.pipeline_fast_ms / 1000, 0.0005)
        self.read = 0  # bytes read from the socket
        self.received = 0  # bytes of the worker's stream decoded (socket, then journal)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; same interface.
        self.transport = cast(asyncio.Transport, transport)
        self.front.bridges[self.conn_id] = self
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(AttributeError, OSError):
            self.spare = os.dup(sock.fileno())
            os.set_blocking(self.spare, False)
        if self.spare is not None:
            self._give_journal(self.spare)

    def _give_journal(self, fd: int) -> None:
        """Make the worker's reply journal and send it in the connection's first frame
        (wire/journal.py); without one (every reply then comes by the socket at once) if
        it cannot be made."""
        made = self._make_journal()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(fd)) as sock:
                socket.send_fds(sock, [journal.FIRST_FRAME], [] if made is None else [made])
        except OSError as exc:
            log.error("bridge connection %d broken: %s", self.conn_id, exc)
            if self.transport is not None:
                self.transport.close()
        finally:
            if made is not None:
                os.close(made)

    def _make_journal(self) -> int | None:
        """A new journal's descriptor, mapped as ``journal``; None (logged) if it cannot be
        made. The caller closes the descriptor once it is sent."""
        made: int | None = None
        try:
            made = journal.create()
            self.journal = JournalReader(made)
        except (OSError, ValueError) as exc:
            log.warning("bridge connection %d: no reply journal: %s", self.conn_id, exc)
            if made is not None:
                os.close(made)
            return None
        return made

    def data_received(self, data: bytes) -> None:
        if not self._from_socket(data) and self.transport is not None:
            self.transport.close()

    def _from_socket(self, data: bytes) -> bool:
        """``_consume`` the bytes of ``data`` not already read from the journal."""
        start, self.read = self.read, self.read + len(data)
        if self.read <= self.received:
            return True
        if start < self.received:
            with memoryview(data) as view:
                return self._consume(bytes(view[self.received - start :]))
        return self._consume(data)

    def _consume(self, data: bytes) -> bool:
        """Hand the complete frames in ``data`` (the stream's bytes from ``received``
        on) to the front; False if the stream is broken (it cannot be resynchronised:
        the connection must close)."""
        front = self.front
        self.received += len(data)
        try:
            self.decoder.feed(data)
            while (frame := self.decoder.next_frame()) is not None:
                if self.joined:
                    front.on_worker_frame(self.conn_id, frame)
                elif self.transport is not None:
                    front.worker_joined(self.conn_id, frame, self.transport)
                    self.joined = True
        except ProtocolError as exc:
            log.error("bridge connection %d broken: %s", self.conn_id, exc)
            return False
        return True

    def catch_up(self, socket_too: bool = True) -> None:
        """Decode what the worker wrote that the loop has not read yet (unless
        ``socket_too`` is False: the loop reads it soon), then what it made and holds in
        its journal: before the front decides that a call of this worker has no reply."""
        if socket_too and self.spare is not None:
            self._read_rest(self.spare)
        if self.journal is not None and self.joined:
            tail = self.journal.tail(self.received)
            if tail and not self._consume(tail):
                self.journal.close()
                self.journal = None  # a broken stream: the connection closes on its own

    def watch(self) -> None:
        """The worker holds a batch of calls: look at its journal in ``patience``."""
        if not self.watching and self.transport is not None:
            self.watching = True
            self.front.event_loop().call_later(self.patience, self._look)

    def _look(self) -> None:
        """Replies the worker made in this batch do not wait for the rest of it (a call
        that turned slow): those in its journal are delivered now."""
        self.watching = False
        if self.transport is None:
            return
        self.catch_up(socket_too=False)
        lane = self.front.router.workers.get(self.conn_id)
        if lane is not None and len(lane.calls) > 1:
            self.watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.catch_up()
        if self.spare is not None:
            os.close(self.spare)
            self.spare = None
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        self.transport = None
        self.front.bridges.pop(self.conn_id, None)
        self.front.worker_left(self.conn_id)

    def _read_rest(self, fd: int) -> None:
        """What the worker wrote that the event loop did not read (bounded: the socket's
        buffer, then end of file or an error)."""
        while self.joined:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:  # EAGAIN (nothing left), ECONNRESET
                return
            if not data or not self._from_socket(data):
                return


def _peer_pid(link: asyncio.BaseTransport) -> int | None:
    """The pid of the process at the other end of a bridge connection (SO_PEERCRED),
    None where unknown."""
    sock = link.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (AttributeError, OSError):
        return None
    pid: int = _UCRED.unpack(creds)[0]
    return pid


def _traced_header(call: Call) -> bytes:
    """Frame header and trace context prefix of a traced call (wire/tracecontext.py), the
    instant it is written to a worker recorded as its ``sent_at``."""
    assert call.trace is not None
    call.sent_at = time.monotonic()
    prefix = tracecontext.prefix(call.trace, call.arrived_at, call.sent_at)
    kind = FrameKind.DISPATCH_TRACED if call.kind == FrameKind.DISPATCH else FrameKind.EVENT_TRACED
    return encode_header(kind, call.call_id, len(prefix) + len(call.payload)) + prefix


def _timeouts_of(settings: Settings) -> dict[int, float]:
    """Each hook type's deadline in seconds by its number; events' under -1."""
    table = {number: settings.timeout_for(name) for number, name in _HOOK_NAMES.items()}
    table[-1] = settings.timeout_for("event")
    return table


def _type_name(call: Call) -> str:
    """The hook type's settings name (``pre``... ``response``, ``event``)."""
    return _HOOK_NAMES.get(call.hook_type, "pre") if call.kind == FrameKind.DISPATCH else "event"


def run_front(settings: Settings, spec: FrontSpec) -> int:
    """Entry point in the forked child."""
    proctitle.set(f"front {settings.socket}")
    for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    heap.keep_large_blocks()  # large calls reuse the heap's pages (system/heap.py)
    front = Front(settings, spec)
    with asyncio.Runner(loop_factory=_loop_factory(settings)) as runner:
        runner.run(front.serve())
    return 0


def _loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for the native front (its transports and epoll loop are C: the front's
    per-call cost is mostly socket writes and wake-ups); grpcio's asyncio integration
    keeps the standard loop."""
    if settings.front != "native":
        return None
    try:
        import uvloop
    except ImportError:  # optional speed-up; the standard loop works the same
        return None
    return uvloop.new_event_loop
