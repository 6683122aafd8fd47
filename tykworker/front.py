"""The front: terminates gRPC (and the raw socket) and routes each call to a worker.

Runs in its own process, forked by the supervisor; the only process that imports grpc.
It never runs plugin code and never parses an Object (``peek_object_header`` only reads
the top-level hook type and name, for deadlines and logs).

Per call: ``router.submit`` -> frame to a worker over its bridge connection -> the
worker's REPLY is the gateway's answer. A timer per call enforces the deadline: on expiry
the gateway gets the timeout answer at once and the supervisor is told which worker is
stuck (it dumps the stacks and kills it). A bridge connection that drops answers its
call with the crash answer. See router.py for the exactly-once invariants.

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
from typing import Any

import grpc
import msgpack

from . import answers, ipc, proctitle
from .answers import Reason
from .config import HOOK_TYPES, Settings, parse_address
from .errors import ProtocolError
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

log = logging.getLogger("tykworker.front")
calls_log = logging.getLogger("tykworker.calls")

_HOOK_NAMES = {number: name for name, number in HOOK_TYPES.items()}
SERVICE = "coprocess.Dispatcher"


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
        self.pids: dict[int, int] = {}  # bridge connection -> worker pid (for logs)
        self.ids = itertools.count(1)
        self.conn_ids = itertools.count(1)
        self.counters = Counters()
        self.board = Scoreboard.open(spec.scoreboard_path)
        self.stopping = asyncio.Event()
        self.fast = False
        self.unix_paths: list[str] = []

    # --- calls ----------------------------------------------------------------------
    async def call(self, kind: FrameKind, payload: bytes) -> bytes:
        """Route one call and wait for its single answer."""
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
            pending.timer = loop.call_later(
                self.settings.timeout_for(hook), self._expire, call.call_id
            )
        try:
            return await pending.future
        finally:
            self.pending.pop(call.call_id, None)
            if pending.timer is not None:
                pending.timer.cancel()

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
        self.board.write_header(queue_depth=len(self.router.queue))

    def _send(self, conn_id: int, call: Call) -> None:
        writer = self.writers[conn_id]
        writer.write(encode_header(FrameKind(call.kind), call.call_id, len(call.payload)))
        writer.write(call.payload)

    def _resolve(self, call: Call, reply: bytes) -> None:
        pending = self.pending.get(call.call_id)
        if pending is not None and not pending.future.done():
            pending.future.set_result(reply)

    def _answer(self, action: Answer) -> None:
        call, reason = action.call, action.reason
        hook = (
            _HOOK_NAMES.get(call.hook_type, "pre") if call.kind == FrameKind.DISPATCH else "event"
        )
        if call.kind == FrameKind.DISPATCH:
            fail_open = hook in self.settings.fail_open
            reply = answers.failure_reply(call.payload, call.hook_type, reason, fail_open)
        else:
            reply = answers.event_reply()
        self._count(reason)
        pid = self.pids.get(action.conn_id) if action.conn_id else None
        calls_log.warning(
            "call %d hook %r (%s) answered by tykworker: %s",
            call.call_id,
            call.hook_name,
            hook,
            reason.code,
            extra={
                "call_id": call.call_id,
                "hook": call.hook_name,
                "worker_pid": pid,
                "reason": reason.code,
                "elapsed": time.monotonic() - call.arrived_at,
            },
        )
        if reason is Reason.TIMEOUT and pid is not None:
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
            self.pids.pop(conn_id, None)
            writer.close()

    def _join(self, conn_id: int, frame: Frame, writer: asyncio.StreamWriter) -> bool:
        if frame.kind != FrameKind.HELLO:
            raise ProtocolError(f"expected HELLO from a worker, got {frame.kind.name}")
        hello = msgpack.unpackb(frame.payload)
        worker = Worker(conn_id, int(hello["pid"]), int(hello["generation"]), int(hello["index"]))
        self.writers[conn_id] = writer
        self.pids[conn_id] = worker.pid
        log.debug("worker pid %d generation %d joined", worker.pid, worker.generation)
        self._apply(self.router.join(worker))
        return True

    def _on_worker_frame(self, conn_id: int, frame: Frame) -> None:
        if frame.kind == FrameKind.REPLY:
            self._apply(self.router.reply(conn_id, frame.call_id), frame.payload)
        elif frame.kind == FrameKind.DRAIN:
            self._apply(self.router.drain(conn_id))
        else:
            raise ProtocolError(f"unexpected {frame.kind.name} frame from a worker")

    # --- raw socket clients ---------------------------------------------------------
    async def on_raw_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        decoder = FrameDecoder(self.settings.max_message_bytes)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while data := await reader.read(1 << 20):
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    task = asyncio.create_task(self._raw_call(frame, writer))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
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
                return await self.call(kind, request)

            return grpc.unary_unary_rpc_method_handler(handle)

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {"Dispatch": unary(FrameKind.DISPATCH), "DispatchEvent": unary(FrameKind.EVENT)},
        )

    async def _start_grpc(self) -> grpc.aio.Server:
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers((self._grpc_handlers(),))
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
            self.unix_paths.append(address)
        else:
            server.add_insecure_port(address)
            await server.start()
        return server

    async def _start_raw(self) -> asyncio.Server | None:
        path = self.settings.raw_socket
        if not path:
            return None
        sock = ipc.bind_unix_listener(Path(path), self.settings.socket_mode)
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
        self.board.write_header(front_pid=os.getpid())
        ipc.report(self.spec.status_fd, "ready")
        log.info("serving coprocess.Dispatcher on %s", self.settings.socket)
        await self.stopping.wait()
        await self._drain(server, raw)
        bridge.close()
        for writer in list(self.writers.values()):
            writer.close()

    def _stop_now(self) -> None:
        self.fast = True
        self.stopping.set()

    async def _drain(self, server: grpc.aio.Server, raw: asyncio.Server | None) -> None:
        """Stop taking calls; give accepted calls until graceful_timeout to finish."""
        grace = 0.0 if self.fast else self.settings.graceful_timeout
        if raw is not None:
            raw.close()
        self.router.stop_accepting()
        if not self.fast:
            log.info("draining %d call(s)", len(self.pending))
        await server.stop(grace)
        for path in self.unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def run_front(settings: Settings, spec: FrontSpec) -> int:
    """Entry point in the forked child."""
    proctitle.set(f"front {settings.socket}")
    for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    front = Front(settings, spec)
    asyncio.run(front.serve())
    return 0
