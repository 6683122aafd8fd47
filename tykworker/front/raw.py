"""The public raw socket: the bridge framing (wire/frames.py) for clients without gRPC.

One ``RawProtocol`` per client connection. Each DISPATCH/EVENT frame is one call routed by
the front exactly like a gRPC call (same queue, deadlines and answers); its REPLY carries
the client's call id. Clients may pipeline: replies go out as calls finish.

Invariants:
* Every call frame read gets exactly one REPLY, unless the connection is gone; or, when the
  client does not read its replies and the unread bytes would pass the connection's buffer
  bound, one ERROR frame with its call id instead.
* Backpressure: frames are no longer taken from the connection (reading pauses, frames
  already read wait in the decoder) while its calls in flight number ``MAX_INFLIGHT`` or
  hold more than the connection's buffer bound, or while the write buffer is full.
* Every connection is admitted by the front's ``Guard`` (cap, idle and body timeouts: a
  frame left incomplete for ``body_timeout`` is a malformed stream).
* A malformed stream gets one ERROR frame (call id 0) and the connection is closed after
  the calls already read are answered. A frame of another kind gets an ERROR frame with its
  call id; the connection stays usable.
* On drain (``RawServer.stop``), calls already read are answered first, then each client
  gets the ERROR frame ``GOODBYE`` (call id 0): any call without a reply was never read and
  is safe to retry elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Callable
from pathlib import Path
from typing import cast

from tykworker.config import Settings
from tykworker.errors import ProtocolError
from tykworker.front.guard import Guard
from tykworker.system import heap, sockets
from tykworker.wire.frames import (
    Frame,
    FrameDecoder,
    FrameKind,
    Payload,
    encode_frame,
    encode_header,
)

#: submit(kind, payload, deadline, respond): route one call; ``respond`` gets its answer.
Submit = Callable[[FrameKind, Payload, "float | None", Callable[[Payload], None]], None]
GOODBYE = b"server stopping: no more replies on this connection"
#: calls in flight per connection before reading pauses (HTTP/2's MAX_CONCURRENT_STREAMS)
MAX_INFLIGHT = 1000


class RawProtocol(asyncio.Protocol):
    def __init__(self, server: RawServer) -> None:
        self.server = server
        self.decoder = FrameDecoder(server.max_message)
        self.transport: asyncio.Transport | None = None
        self.inflight = 0
        self.inflight_bytes = 0
        self.closing = False  # no more frames will be read
        self.frames = 0  # frames taken so far: the guard's tick sees progress by it
        self._paused_memory = False
        self._paused_write = False
        self._mark = -1
        self._eof = False
        self._since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; same interface.
        self.transport = cast(asyncio.Transport, transport)
        if not self.server.guard.admit(self):
            self.transport.write(encode_frame(FrameKind.ERROR, 0, b"too many connections"))
            self.transport.close()
            return
        self.server.clients.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.decoder.feed(data)
        except ProtocolError as exc:
            self._fail(str(exc))
            return
        self._take_frames()

    def _take_frames(self) -> None:
        try:
            while not self._paused_memory and (frame := self.decoder.next_frame()) is not None:
                self._start(frame)
        except ProtocolError as exc:
            self._fail(str(exc))

    def eof_received(self) -> bool:
        self._eof = True
        if not self._paused_memory:
            self._end_of_input()
        return True  # keep our side open until the calls read are answered

    def _end_of_input(self) -> None:
        if self.decoder.buffered and not self.closing:
            self._fail(f"connection closed inside a frame ({self.decoder.buffered} bytes)")
        self.closing = True
        self._close_when_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        heap.release()  # the pages its buffers kept (system/heap.py) go to the kernel
        self.server.guard.leave(self)
        self.server.clients.discard(self)
        self.server.changed()

    def pause_writing(self) -> None:
        self._paused_write = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused_write = False
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.closing:
            return
        limit = self.server.buffer_limit
        if self._paused_memory:  # resume at half the bounds (no flapping)
            over = self.inflight_bytes > limit // 2 or self.inflight > MAX_INFLIGHT // 2
        else:
            over = self.inflight_bytes > limit or self.inflight >= MAX_INFLIGHT
        was, self._paused_memory = self._paused_memory, over
        if over or self._paused_write:
            transport.pause_reading()
        else:
            if was:
                self._take_frames()  # frames read before the pause come first
            if self._paused_memory:
                return
            if self._eof:
                self._end_of_input()
            else:
                transport.resume_reading()

    # --- the guard (cap and timeouts; front/guard.py) -------------------------------------
    @property
    def handshaking(self) -> bool:
        return False  # no handshake: a raw client is never evicted for a newcomer

    def evict(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def tick(self, now: float) -> str | None:
        """Idle and incomplete-frame timeouts (called by the guard's timer)."""
        guard = self.server.guard
        if self.transport is None or self.closing:
            return None
        if self.inflight or self.frames != self._mark:
            self._mark, self._since = self.frames, now
            return None
        waited = now - self._since
        if self.decoder.buffered:
            if waited >= guard.body_timeout:
                self._fail(f"frame incomplete after {guard.body_timeout:g} s")
                return f"raw frame incomplete after {guard.body_timeout:g} s"
        elif guard.idle_timeout and waited >= guard.idle_timeout:
            self._write(encode_frame(FrameKind.ERROR, 0, b"idle: closing"))
            self.closing = True
            self._close_when_done()
            return f"raw connection idle for {guard.idle_timeout:g} s"
        return None

    def _start(self, frame: Frame) -> None:
        if frame.kind not in (FrameKind.DISPATCH, FrameKind.EVENT):
            text = f"frame kind {frame.kind.name} is not a call".encode()
            self._write(encode_frame(FrameKind.ERROR, frame.call_id, text))
            return
        self.frames += 1
        size = len(frame.payload)
        self.inflight += 1
        self.inflight_bytes += size
        self.server.submit(
            frame.kind, frame.payload, None, functools.partial(self._answered, frame.call_id, size)
        )
        if self.inflight >= MAX_INFLIGHT or self.inflight_bytes > self.server.buffer_limit:
            self._update_reading()

    def _answered(self, call_id: int, size: int, reply: Payload) -> None:
        self.inflight -= 1
        self.inflight_bytes -= size
        transport = self.transport
        if (
            self._paused_write
            and transport is not None
            and transport.get_write_buffer_size() + len(reply) > self.server.buffer_limit
        ):
            text = b"reply not sent: the client does not read its replies"
            self._write(encode_frame(FrameKind.ERROR, call_id, text))
        else:
            self._write(encode_header(FrameKind.REPLY, call_id, len(reply)) + reply)
        if self._paused_memory:
            self._update_reading()
        self._close_when_done()
        self.server.changed()

    def _fail(self, message: str) -> None:
        self._write(encode_frame(FrameKind.ERROR, 0, message.encode()))
        self.closing = True
        self._close_when_done()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close_when_done(self) -> None:
        if self.closing and not self.inflight and self.transport is not None:
            self.transport.close()

    def say_goodbye(self) -> None:
        self._write(encode_frame(FrameKind.ERROR, 0, GOODBYE))
        self.closing = True
        if self.transport is not None:
            self.transport.close()


class RawServer:
    """Listens on ``settings.raw_socket`` and feeds calls to ``submit``."""

    def __init__(self, submit: Submit, settings: Settings) -> None:
        self.submit = submit
        self.max_message = settings.max_message_bytes
        self.buffer_limit = settings.connection_buffer_bytes
        self.guard = Guard.shared(settings)
        self.clients: set[RawProtocol] = set()
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()

    async def start(
        self, path: str, mode: int, gid: int | None, sock: socket.socket | None = None
    ) -> None:
        """Bind ``path``, or serve ``sock``, the listener the supervisor bound for it."""
        sock = sock or sockets.bind_unix_listener(Path(path), mode, group=gid)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: RawProtocol(self), sock=sock)

    async def stop(self, grace: float) -> None:
        """Stop accepting; answer the calls already read (up to ``grace``); say goodbye."""
        if self._server is not None:
            self._server.close()
        # Clients keep being read until the goodbye: calls that arrive meanwhile get the
        # front's "unavailable" answer, so every call read is answered.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(c.inflight for c in self.clients) and loop.time() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
        for client in list(self.clients):
            client.say_goodbye()
