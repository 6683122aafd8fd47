"""asyncio driver of the native front: sockets <-> ``H2Connection`` <-> ``Front.call``.

One ``H2Protocol`` per accepted connection. Each read is fed to the sans-IO connection;
every complete call is handed to ``submit`` (``Front.submit``: router, queue, deadline,
bridge) with a callback that receives its one answer and writes it to the stream. No task
or future per call.

Invariants:
* One write per loop iteration and connection: whatever a read produces (answers,
  SETTINGS/PING ACKs, WINDOW_UPDATE, GOAWAY) and the answers that workers return in the
  same iteration go out in one ``transport.write``, by one ``call_soon`` flush. A gRPC-Go
  client (the gateway) sends a BDP PING after each answer it reads; its ACK waits at most
  until the end of the iteration and shares the write of the answers read with it, instead
  of waking the client on its own.
* Backpressure: reading pauses while the calls in flight on a connection hold more than
  ``buffer_limit`` payload bytes, or while the transport's write buffer is full. Answers
  held by flow control are bounded in the sans-IO connection (new streams refused, answers
  over the bound replaced by RESOURCE_EXHAUSTED): reading goes on there, because the
  client's WINDOW_UPDATE that releases them must be read. An answer that would push the
  transport's write buffer (a client that does not read at all) past the connection's
  buffer bound is replaced by RESOURCE_EXHAUSTED.
* Every connection is admitted by the front's ``Guard`` (cap, preface/idle/body
  timeouts, the shared ``BufferPool``) and leaves it when lost; its counted bytes go back
  to the pool then.
* ``stop(grace)``: stop accepting, GOAWAY(NO_ERROR) on every connection, wait up to
  ``grace`` for the streams already opened to be answered, then close everything (a
  connection whose streams were all answered is half-closed first, ``H2Protocol._end``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from tykworker import tracing
from tykworker.config import Settings, parse_address
from tykworker.front import health as health_service
from tykworker.front.guard import Guard
from tykworker.front.h2 import frames as h2frames
from tykworker.front.h2.conn import H2Connection
from tykworker.front.h2.frames import ErrorCode
from tykworker.front.h2.heads import Status
from tykworker.front.h2.state import BufferPool, CallEvent, Limits
from tykworker.system import heap, sockets
from tykworker.wire.frames import FrameKind, Payload

log = logging.getLogger("tykworker.front")

#: Seconds a client has to close a connection whose end the front sent after GOAWAY
#: (``H2Protocol._end``) before the front closes it.
CLOSE_LINGER = 1.0

#: submit(kind, payload, deadline, respond, trace): route one call; ``respond`` gets its
#: answer; ``trace``: the call's propagation headers (tracing on), else None.
Handler = Callable[
    [FrameKind, Payload, "float | None", Callable[[Payload], None], "bytes | None"], None
]


class H2Protocol(asyncio.Protocol):
    def __init__(self, server: NativeServer) -> None:
        self.server = server
        self.conn = H2Connection(server.limits, pool=server.guard.pool)
        self.transport: asyncio.Transport | None = None
        self._born = 0.0
        self._idle_since = 0.0
        self._idle_mark = -1  # conn.last_stream_id at the last tick that found it idle
        self.watches: set[asyncio.Task[None]] = set()
        self.inflight_bytes = 0
        self._flush_scheduled = False
        self._paused_memory = False
        self._paused_write = False
        self._ended = False  # our side is shut (``_end``): nothing more is written
        # ``asyncio.get_running_loop()`` costs a getpid() system call on 3.11: cache it
        self._loop = asyncio.get_running_loop()

    # --- asyncio callbacks ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; same interface.
        self.transport = cast(asyncio.Transport, transport)
        if not self.server.guard.admit(self):  # the cap: our SETTINGS, then GOAWAY, closed
            goaway = h2frames.goaway(0, ErrorCode.ENHANCE_YOUR_CALM, b"too many connections")
            self.transport.write(self.conn.data_to_send() + goaway)
            self.conn.release()
            self.transport.close()
            return
        self._born = self._loop.time()
        self.server.protocols.add(self)
        if self.server.stopping:
            self.conn.drain()
        self._flush()

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive(data):
            self._start(event)
        if self.conn.notices:
            self._log_notices()
        if self.conn.error is not None and self.conn.closed:
            code, message = self.conn.error
            log.warning("HTTP/2 connection error %s: %s", code.name, message)
        self._schedule_flush()

    def _log_notices(self) -> None:
        for notice in self.conn.notices:
            log.warning("HTTP/2: %s", notice)
        self.conn.notices.clear()

    def eof_received(self) -> bool | None:
        return None  # close our side too; answers in flight are dropped

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.conn.release()  # its held bytes go back to the pool
        heap.release()  # and the pages its buffers kept (system/heap.py) to the kernel
        for task in list(self.watches):
            task.cancel()
        self.server.guard.leave(self)
        self.server.protocols.discard(self)
        self.server.changed()

    # --- the guard (cap and timeouts; front/guard.py) -------------------------------------
    @property
    def handshaking(self) -> bool:
        return not self.conn.started

    def evict(self) -> None:
        self.abort()

    def tick(self, now: float) -> str | None:
        """Preface, idle and body timeouts (called by the guard's timer)."""
        guard, conn = self.server.guard, self.conn
        if self.transport is None:
            return None
        if not conn.started:
            if now - self._born >= guard.preface_timeout:
                self.abort()
                return f"no HTTP/2 preface and SETTINGS within {guard.preface_timeout:g} s"
            return None
        if not conn.idle:
            self._idle_since = 0.0
            if conn.expire(now, guard.body_timeout):
                self._log_notices()
                self._flush()
            return None
        if not guard.idle_timeout or conn.draining:
            return None
        if not self._idle_since or conn.last_stream_id != self._idle_mark:
            self._idle_since, self._idle_mark = now, conn.last_stream_id
        elif now - self._idle_since >= guard.idle_timeout:
            self.drain()  # GOAWAY(NO_ERROR); closed once written (nothing is open)
            return f"idle for {guard.idle_timeout:g} s (GOAWAY NO_ERROR)"
        return None

    def pause_writing(self) -> None:
        self._paused_write = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused_write = False
        self._update_reading()

    # --- calls ----------------------------------------------------------------------------
    def _start(self, event: CallEvent) -> None:
        if event.kind is None:
            self._health(event)
            return
        size = len(event.payload)
        self.inflight_bytes += size
        self.server.handler(
            event.kind,
            event.payload,
            event.timeout,
            functools.partial(self._answered, event.stream_id, size),
            event.trace,
        )
        if self.inflight_bytes > self.server.limits_buffer:
            self._update_reading()

    def _answered(self, stream_id: int, size: int, reply: Payload) -> None:
        self.inflight_bytes -= size
        transport = self.transport
        if transport is None:
            return  # the client went away; the call was still routed and answered
        if self._paused_write and self._unread(transport, len(reply)):
            message = "answer not sent: the client does not read its answers"
            self.conn.respond_status(stream_id, Status.RESOURCE_EXHAUSTED, message)
        else:
            self.conn.respond(stream_id, reply)
        if self._paused_memory:
            self._update_reading()
        self._schedule_flush()
        if self.conn.idle:
            self.server.changed()

    def _health(self, event: CallEvent) -> None:
        """``grpc.health.v1.Health``: Check answered at once, Watch streamed (health.py)."""
        health = self.server.health
        if health is None:
            self.conn.respond_status(event.stream_id, Status.UNIMPLEMENTED, "no health service")
        elif event.health == "Watch":
            task = asyncio.get_running_loop().create_task(self._watch(health, event))
            self.watches.add(task)
            task.add_done_callback(self.watches.discard)
        else:
            try:
                service = health_service.decode_request(bytes(event.payload))
            except (ValueError, UnicodeDecodeError):
                service = "\0invalid"
            status = health.status(service)
            if status is health_service.ServingStatus.SERVICE_UNKNOWN:
                self.conn.respond_status(event.stream_id, Status.NOT_FOUND, "unknown service")
            else:
                self.conn.respond(event.stream_id, health_service.encode_response(status))

    async def _watch(self, health: health_service.Health, event: CallEvent) -> None:
        """Every status change as one message; ends when the front drains (health.py)."""
        sid, conn = event.stream_id, self.conn
        if not conn.start_stream(sid):
            return
        try:
            async for message in health.watch(bytes(event.payload), cast(Any, None)):
                if not conn.send_message(sid, message):
                    return  # the client went away
                self._schedule_flush()
            conn.finish(sid)
        finally:
            self._schedule_flush()
            self.server.changed()

    # --- output ---------------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self.transport
        if transport is None or self._ended:
            return
        out = self.conn.output()
        if out:
            if len(out) > 8 and sum(map(len, out)) >= 65536:  # large answers: gathered
                transport.writelines(out)
            else:
                transport.write(b"".join(out))
        if self.conn.finished:
            self._end(transport)

    def _end(self, transport: asyncio.Transport) -> None:
        """Nothing more will happen on the connection (``conn.finished``). After an error
        it is closed at once. After a GOAWAY(NO_ERROR) with every stream answered (a drain,
        the idle timeout) only our side is shut: the client reads every answer, then our
        end of input, and closes; its last frames (acknowledgements, WINDOW_UPDATE) still
        land. Closed outright, the connection made them fail with EPIPE, and a gRPC client
        then dropped a stream whose answer it had received but not read yet. A client that
        does not close is closed ``CLOSE_LINGER`` later."""
        if self.conn.closed or not transport.can_write_eof():
            transport.close()
            return
        self._ended = True
        transport.write_eof()
        self._loop.call_later(CLOSE_LINGER, self.abort)

    def _unread(self, transport: asyncio.Transport, extra: int) -> bool:
        """True if ``extra`` more bytes in the write buffer would pass the bound."""
        if transport.get_write_buffer_size() + extra <= self.conn.limits.connection_buffer:
            return False
        log.warning("HTTP/2: answer replaced by RESOURCE_EXHAUSTED: the client does not read")
        return True

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        limit = self.server.limits_buffer
        over = self.inflight_bytes > (limit if not self._paused_memory else limit // 2)
        self._paused_memory = over
        if over or self._paused_write:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def drain(self) -> None:
        self.conn.drain()
        self._flush()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.close()


class NativeServer:
    """The listening side: accepts connections, runs ``H2Protocol`` on each."""

    def __init__(
        self,
        handler: Handler,
        limits: Limits,
        buffer_limit: int,
        health: health_service.Health | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.handler = handler
        self.guard = guard or Guard(1 << 30, 10.0, 0.0, 60.0, BufferPool(1 << 62))
        self.health = health
        self.limits = limits
        self.limits_buffer = buffer_limit
        self.protocols: set[H2Protocol] = set()
        self.stopping = False
        self.unix_paths: list[str] = []
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()

    async def start(self, sock: socket.socket | None = None, address: str = "") -> None:
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_unix_server(lambda: H2Protocol(self), sock=sock)
            return
        host, _, port = address.rpartition(":")
        self._server = await loop.create_server(
            lambda: H2Protocol(self), host.strip("[]") or None, int(port), reuse_address=True
        )

    @property
    def ports(self) -> list[int]:
        """Bound TCP ports (useful with port 0)."""
        if self._server is None:
            return []
        return [s.getsockname()[1] for s in self._server.sockets if s.family != socket.AF_UNIX]

    async def stop(self, grace: float) -> None:
        """GOAWAY everywhere, wait up to ``grace`` for open streams, close."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for proto in list(self.protocols):
            proto.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(not p.conn.idle for p in self.protocols):
            left = deadline - loop.time()
            if left <= 0:
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        # Connections still owing answers are closed; the others, half-closed once their
        # last answer went out (``H2Protocol._end``), get ``CLOSE_LINGER`` to be closed
        # by their clients (none on a fast stop).
        for proto in [p for p in self.protocols if not p.conn.idle]:
            proto.abort()
        linger = loop.time() + (CLOSE_LINGER if grace > 0 else 0.0)
        while self.protocols and loop.time() < linger:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), linger - loop.time())
        for proto in list(self.protocols):
            proto.abort()
        await asyncio.sleep(0)


async def start_native(
    handler: Handler,
    settings: Settings,
    health: health_service.Health | None = None,
    sock: socket.socket | None = None,
) -> NativeServer:
    """Bind ``settings.socket`` (Unix: mode and stale-socket rules of ``ipc``), or take the
    Unix listener ``sock`` bound for it by the supervisor, and serve.
    ``health`` serves ``grpc.health.v1.Health`` (Check and Watch) on the same socket."""
    limits = Limits(
        max_message=settings.max_message_bytes,
        connection_buffer=settings.connection_buffer_bytes,
        trace_context=tracing.enabled(settings.tracing, os.environ),
    )
    buffer_limit = 2 * settings.max_message_bytes
    server = NativeServer(handler, limits, buffer_limit, health, Guard.shared(settings))
    kind, address = parse_address(settings.socket)
    if kind == "unix":
        sock = sock or sockets.bind_unix_listener(
            Path(address), settings.socket_mode, group=settings.socket_gid()
        )
        server.unix_paths.append(address)
        await server.start(sock=sock)
    else:
        await server.start(address=address)
    return server
