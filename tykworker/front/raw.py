"""The public raw socket: the bridge framing (wire/frames.py) for clients without gRPC.

One ``RawProtocol`` per client connection. Each DISPATCH/EVENT frame is one call routed by
the front exactly like a gRPC call (same queue, deadlines and answers); its REPLY carries
the client's call id. Clients may pipeline: replies go out as calls finish.

Invariants:
* Every call frame read gets exactly one REPLY, unless the connection is gone.
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
from tykworker.system import sockets
from tykworker.wire.frames import Frame, FrameDecoder, FrameKind, encode_frame, encode_header

#: submit(kind, payload, deadline, respond): route one call; ``respond`` gets its answer.
Submit = Callable[[FrameKind, bytes, "float | None", Callable[[bytes], None]], None]
GOODBYE = b"server stopping: no more replies on this connection"


class RawProtocol(asyncio.Protocol):
    def __init__(self, server: RawServer) -> None:
        self.server = server
        self.decoder = FrameDecoder(server.max_message)
        self.transport: asyncio.Transport | None = None
        self.inflight = 0
        self.closing = False  # no more frames will be read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; same interface.
        self.transport = cast(asyncio.Transport, transport)
        self.server.clients.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.decoder.feed(data)
            while (frame := self.decoder.next_frame()) is not None:
                self._start(frame)
        except ProtocolError as exc:
            self._fail(str(exc))

    def eof_received(self) -> bool:
        if self.decoder.buffered and not self.closing:
            self._fail(f"connection closed inside a frame ({self.decoder.buffered} bytes)")
        self.closing = True
        self._close_when_done()
        return True  # keep our side open until the calls read are answered

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.clients.discard(self)
        self.server.changed()

    def _start(self, frame: Frame) -> None:
        if frame.kind not in (FrameKind.DISPATCH, FrameKind.EVENT):
            text = f"frame kind {frame.kind.name} is not a call".encode()
            self._write(encode_frame(FrameKind.ERROR, frame.call_id, text))
            return
        self.inflight += 1
        self.server.submit(
            frame.kind, frame.payload, None, functools.partial(self._answered, frame.call_id)
        )

    def _answered(self, call_id: int, reply: bytes) -> None:
        self.inflight -= 1
        self._write(encode_header(FrameKind.REPLY, call_id, len(reply)) + reply)
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
