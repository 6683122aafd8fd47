"""The front: terminates gRPC (and the raw socket) and routes each call to a worker.

Runs in its own process, forked by the supervisor; the only process that imports grpc.
It never runs plugin code and never parses an Object (``peek_object_header`` only reads
the top-level hook type and name, for deadlines and logs).

Per call: ``router.submit`` -> frame to a worker over its bridge connection -> the
worker's REPLY is the gateway's answer. A timer per call enforces the deadline: on expiry
the gateway gets the timeout answer at once and the supervisor is told which worker is
stuck (it dumps the stacks and kills it). A bridge connection that drops answers its
call with the crash answer. See router.py for the exactly-once invariants.

Observability (never on the call path unless enabled): the gRPC health service
(health.py) on the same socket; with the ``metrics`` setting, per-call statistics kept in
plain dicts and served for Prometheus (metrics.py). A worker announces a plugin error with
a CONTROL frame before its reply; the front counts it (``Counters.errors``, metrics).

Signals: SIGTERM = drain (stop taking calls, finish those accepted, exit 0);
SIGQUIT/SIGINT = exit now.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import msgpack

from . import answers, ipc, proctitle
from .answers import Reason
from .config import HOOK_TYPES, Settings, parse_address
from .errors import ConfigError, ProtocolError
from .h2server import NativeServer, start_native
from .health import Health, ServingStatus
from .protocol import (
    Frame,
    FrameDecoder,
    FrameKind,
    encode_frame,
    encode_header,
    peek_object_header,
)
from .router import Action, Answer, Assign, Call, Close, Completed, Router, Worker
from .scoreboard import Scoreboard

if TYPE_CHECKING:
    from .metrics import CallStats

log = logging.getLogger("tykworker.front")
calls_log = logging.getLogger("tykworker.calls")

_HOOK_NAMES = {number: name for name, number in HOOK_TYPES.items()}
SERVICE = "coprocess.Dispatcher"
#: ERROR frame (call id 0) a raw client gets when the front stops: no more replies. After
#: a graceful stop, every call the front had read was answered before it.
RAW_GOODBYE = b"server stopping: no more replies on this connection"


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[bytes]
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class FrontSpec:
    bridge_sock: socket.socket
    status_fd: int
    scoreboard_path: Path


@dataclass(slots=True)
class Counters:
    calls: int = 0
    timeouts: int = 0
    crashes: int = 0
    overloads: int = 0
    errors: int = 0
    by_reason: dict[Reason, int] = field(default_factory=dict)


class Front:
    def __init__(self, settings: Settings, spec: FrontSpec) -> None:
        self.settings = settings
        self.spec = spec
        self.router = Router(queue_limit=settings.queue_size)
        self.pending: dict[int, _Pending] = {}
        self.writers: dict[int, asyncio.StreamWriter] = {}
        self.members: dict[int, Worker] = {}  # bridge connection -> worker (for logs)
        self.ids = itertools.count(1)
        self.conn_ids = itertools.count(1)
        self.counters = Counters()
        self.board = Scoreboard.open(spec.scoreboard_path)
        self.stopping = asyncio.Event()
        self.fast = False
        self.unix_paths: list[str] = []
        self.raw_calls: set[asyncio.Task[None]] = set()  # answered before the front exits
        self.raw_writers: set[asyncio.StreamWriter] = set()  # told when the front stops
        self.health = Health(self.is_serving)
        self.stats: CallStats | None = None  # set when the metrics endpoint is on

    # --- calls ----------------------------------------------------------------------
    async def call(
        self, kind: FrameKind, payload: bytes, deadline: float | None = None
    ) -> bytes:
        """Route one call and wait for its single answer. ``deadline``: the client's own,
        in seconds from now (``grpc-timeout``); the shorter of it and the hook type's wins."""
        if kind == FrameKind.DISPATCH:
            hook_type, hook_name = peek_object_header(payload)
            hook = _HOOK_NAMES.get(hook_type, "pre")
        else:
            hook_type, hook_name, hook = 0, "", "event"
        call = Call(next(self.ids), kind, payload, hook_type, hook_name, time.monotonic())
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future())
        self.pending[call.call_id] = pending
        self.counters.calls += 1
        self._apply(self.router.submit(call))
        if not pending.future.done():
            limit = self.settings.timeout_for(hook)
            if deadline is not None:
                limit = min(limit, deadline)
            pending.timer = loop.call_later(limit, self._expire, call.call_id)
        try:
            return await pending.future
        finally:
            # If the client gave up (this task cancelled), the call stays routed and its
            # timer armed: a worker hanging on it must still be detected and killed.
            # ``_resolve`` forgets the call once the router is done with it.
            if self.stats is not None:
                self.stats.observe_call(hook, hook_name, time.monotonic() - call.arrived_at)

    def _expire(self, call_id: int) -> None:
        self._apply(self.router.expire(call_id))

    def _apply(self, actions: list[Action], reply: bytes = b"") -> None:
        for action in actions:
            if isinstance(action, Assign):
                self._send(action.conn_id, action.call)
            elif isinstance(action, Completed):
                self._resolve(action.call, reply)
            elif isinstance(action, Answer):
                self._answer(action)
            elif isinstance(action, Close):
                writer = self.writers.pop(action.conn_id, None)
                if writer is not None:
                    writer.close()
        self.board.write_header(queue_depth=len(self.router.queue), calls=self.counters.calls)

    def _send(self, conn_id: int, call: Call) -> None:
        if self.stats is not None:
            self.stats.observe_queue_wait(time.monotonic() - call.arrived_at)
        writer = self.writers[conn_id]
        header = encode_header(FrameKind(call.kind), call.call_id, len(call.payload))
        if len(call.payload) < 65536:  # one send() syscall per call: the front's main cost
            writer.write(header + call.payload)
        else:  # large: two writes beat copying the payload
            writer.write(header)
            writer.write(call.payload)

    def _resolve(self, call: Call, reply: bytes) -> None:
        """The router is done with ``call``: deliver its one answer (unless the client
        already went away) and disarm its deadline."""
        pending = self.pending.pop(call.call_id, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        if not pending.future.done():
            pending.future.set_result(reply)

    def _answer(self, action: Answer) -> None:
        call, reason = action.call, action.reason
        hook = _type_name(call)
        if call.kind == FrameKind.DISPATCH:
            fail_open = hook in self.settings.fail_open
            reply = answers.failure_reply(call.payload, call.hook_type, reason, fail_open)
        else:
            reply = answers.event_reply()
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
        if reason is Reason.TIMEOUT and pid is not None:
            self.health.notify()  # that worker is lost
            ipc.report(
                self.spec.status_fd,
                "stuck",
                worker=pid,
                call_id=call.call_id,
                hook=call.hook_name,
                elapsed=time.monotonic() - call.arrived_at,
            )
        self._resolve(call, reply)

    def _count(self, reason: Reason) -> None:
        c = self.counters
        c.by_reason[reason] = c.by_reason.get(reason, 0) + 1
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
    async def on_worker(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_id = next(self.conn_ids)
        decoder = FrameDecoder(self.settings.max_message_bytes)
        joined = False
        try:
            while data := await reader.read(1 << 20):
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    if not joined:
                        joined = self._join(conn_id, frame, writer)
                    else:
                        self._on_worker_frame(conn_id, frame)
        except (ProtocolError, ConnectionError, ValueError) as exc:
            log.error("bridge connection %d broken: %s", conn_id, exc)
        except asyncio.CancelledError:
            pass  # the front is shutting down
        finally:
            self.writers.pop(conn_id, None)
            self._apply(self.router.leave(conn_id))
            self.members.pop(conn_id, None)
            self.health.notify()
            writer.close()

    def _join(self, conn_id: int, frame: Frame, writer: asyncio.StreamWriter) -> bool:
        if frame.kind != FrameKind.HELLO:
            raise ProtocolError(f"expected HELLO from a worker, got {frame.kind.name}")
        hello = msgpack.unpackb(frame.payload)
        worker = Worker(conn_id, int(hello["pid"]), int(hello["generation"]), int(hello["index"]))
        self.writers[conn_id] = writer
        self.members[conn_id] = worker
        log.debug("worker pid %d generation %d joined", worker.pid, worker.generation)
        self._apply(self.router.join(worker))
        self.health.notify()
        return True

    def _on_worker_frame(self, conn_id: int, frame: Frame) -> None:
        if frame.kind == FrameKind.REPLY:
            self._apply(self.router.reply(conn_id, frame.call_id), frame.payload)
        elif frame.kind == FrameKind.DRAIN:
            self._apply(self.router.drain(conn_id))
            self.health.notify()
        elif frame.kind == FrameKind.CONTROL:
            self._on_worker_control(conn_id, frame)
        else:
            raise ProtocolError(f"unexpected {frame.kind.name} frame from a worker")

    def _on_worker_control(self, conn_id: int, frame: Frame) -> None:
        """``{"op": "failed", "reason": code}``: the plugin failed the call ``frame.call_id``
        (its REPLY follows). Unknown ops are ignored (newer workers, older front)."""
        message = msgpack.unpackb(frame.payload)
        worker = self.router.workers.get(conn_id)
        call = worker.call if worker else None
        if not isinstance(message, dict) or message.get("op") != "failed" or call is None:
            return
        if call.call_id != frame.call_id:
            return  # the call was already answered (timeout): it is counted there
        self.counters.errors += 1
        self.board.write_header(errors=self.counters.errors)
        if self.stats is not None:
            reason = str(message.get("reason", ""))
            self.stats.observe_answer(_type_name(call), call.hook_name, reason)

    # --- health and metrics ---------------------------------------------------------
    def is_serving(self) -> bool:
        """Accepting calls, and a worker of the current (or a newer) generation can take
        them (health.py)."""
        if not self.router.accepting:
            return False
        generation = self.board.header().generation
        return any(
            w.generation >= generation and not w.draining and not w.lost
            for w in self.router.workers.values()
        )

    async def _start_metrics(self) -> asyncio.AbstractServer | None:
        """The Prometheus endpoint, if configured. A bind failure is logged, not fatal:
        calls matter more than metrics."""
        if not self.settings.metrics:
            return None
        from . import metrics

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

    # --- raw socket clients ---------------------------------------------------------
    async def on_raw_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        decoder = FrameDecoder(self.settings.max_message_bytes)
        tasks: set[asyncio.Task[None]] = set()
        self.raw_writers.add(writer)
        try:
            while data := await reader.read(1 << 20):
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    task = asyncio.create_task(self._raw_call(frame, writer))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    self.raw_calls.add(task)
                    task.add_done_callback(self.raw_calls.discard)
            if decoder.buffered:  # the client half-closed in the middle of a frame
                text = f"connection closed inside a frame ({decoder.buffered} bytes)"
                writer.write(encode_frame(FrameKind.ERROR, 0, text.encode()))
        except ProtocolError as exc:
            message = str(exc).encode()
            writer.write(encode_frame(FrameKind.ERROR, 0, message))
        except (ConnectionError, asyncio.CancelledError):
            pass
        if tasks:
            await asyncio.wait(tasks)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
        self.raw_writers.discard(writer)

    async def _raw_call(self, frame: Frame, writer: asyncio.StreamWriter) -> None:
        if frame.kind not in (FrameKind.DISPATCH, FrameKind.EVENT):
            text = f"frame kind {frame.kind.name} is not a call".encode()
            writer.write(encode_frame(FrameKind.ERROR, frame.call_id, text))
            return
        reply = await self.call(frame.kind, frame.payload)
        if not writer.is_closing():
            writer.write(encode_header(FrameKind.REPLY, frame.call_id, len(reply)) + reply)

    # --- serving --------------------------------------------------------------------
    def _grpc_handlers(self) -> grpc.GenericRpcHandler[bytes, bytes]:
        def unary(kind: FrameKind) -> grpc.RpcMethodHandler[bytes, bytes]:
            async def handle(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
                return await self.call(kind, request, context.time_remaining())

            return grpc.unary_unary_rpc_method_handler(handle)

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {"Dispatch": unary(FrameKind.DISPATCH), "DispatchEvent": unary(FrameKind.EVENT)},
        )

    async def _start_grpc(self) -> grpc.aio.Server | NativeServer:
        if self.settings.front == "native":  # h2server.py: built-in HTTP/2 for unary calls
            native = await start_native(self.call, self.settings, self.health)
            self.unix_paths.extend(native.unix_paths)
            return native
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers((self._grpc_handlers(), self.health.handler()))
        kind, address = parse_address(self.settings.socket)
        if kind == "unix":
            ipc.claim_unix_path(address)
            old = os.umask(0o777 & ~self.settings.socket_mode)
            try:
                server.add_insecure_port("unix:" + address)
                await server.start()
            finally:
                os.umask(old)
            os.chmod(address, self.settings.socket_mode)
            ipc.set_group(address, self.settings.socket_gid())
            self.unix_paths.append(address)
        else:
            server.add_insecure_port(address)
            await server.start()
        return server

    async def _start_raw(self) -> asyncio.Server | None:
        path = self.settings.raw_socket
        if not path:
            return None
        sock = ipc.bind_unix_listener(
            Path(path), self.settings.socket_mode, group=self.settings.socket_gid()
        )
        self.unix_paths.append(path)
        return await asyncio.start_unix_server(self.on_raw_client, sock=sock, limit=1 << 20)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        for signum in (signal.SIGQUIT, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop_now)
        bridge = await asyncio.start_unix_server(
            self.on_worker, sock=self.spec.bridge_sock, limit=1 << 20
        )
        server = await self._start_grpc()
        raw = await self._start_raw()
        metrics = await self._start_metrics()
        self.board.write_header(front_pid=os.getpid())
        ipc.report(self.spec.status_fd, "ready")
        log.info("serving coprocess.Dispatcher on %s", self.settings.socket)
        await self.stopping.wait()
        await self._drain(server, raw)
        if metrics is not None:
            metrics.close()
        bridge.close()
        for writer in list(self.writers.values()):
            writer.close()

    def _stop_now(self) -> None:
        self.fast = True
        self.stopping.set()

    async def _drain(
        self, server: grpc.aio.Server | NativeServer, raw: asyncio.Server | None
    ) -> None:
        """Stop taking calls; give accepted calls until graceful_timeout to finish."""
        grace = 0.0 if self.fast else self.settings.graceful_timeout
        if raw is not None:
            raw.close()
        self.router.stop_accepting()
        self.health.close()  # NOT_SERVING; Watch streams end so they do not hold the stop
        if not self.fast:
            log.info("draining %d call(s)", len(self.pending))
        deadline = time.monotonic() + grace
        await server.stop(grace)
        # Every raw call read so far gets its answer; then each raw client is told, so
        # that it knows a call without a reply was never read (safe to retry elsewhere).
        while self.raw_calls and time.monotonic() < deadline:
            await asyncio.wait(set(self.raw_calls), timeout=deadline - time.monotonic())
        for writer in self.raw_writers:
            writer.write(encode_frame(FrameKind.ERROR, 0, RAW_GOODBYE))
            writer.close()
        for path in self.unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _type_name(call: Call) -> str:
    """The hook type's settings name (``pre``... ``response``, ``event``)."""
    return _HOOK_NAMES.get(call.hook_type, "pre") if call.kind == FrameKind.DISPATCH else "event"


def run_front(settings: Settings, spec: FrontSpec) -> int:
    """Entry point in the forked child."""
    proctitle.set(f"front {settings.socket}")
    for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    front = Front(settings, spec)
    asyncio.run(front.serve())
    return 0
