"""Streams and answers of the native front's HTTP/2 connection (base of ``H2Connection``).

``StreamTable`` keeps the open streams, the streams closed recently (to judge late
frames), the output buffer and the send side of flow control; it writes answers: unary
(``respond``, ``respond_status``), server-streaming (``start_stream``, ``send_message``,
``finish``: the health service's Watch), and refusals. ``h2conn.H2Connection`` adds the
parser and the frame handlers. No I/O.

Invariants:
* Answer DATA never exceeds the peer's connection window, the stream's window or the
  peer's MAX_FRAME_SIZE; a stream's trailers follow its last DATA byte.
* A stream leaves ``streams`` exactly once, recorded in ``closed`` as ENDED, RESET_BY_US or
  RESET_BY_PEER; if its call is still running it becomes a zombie until the driver's
  answer arrives (zombies count against MAX_CONCURRENT_STREAMS).
* ``buffered`` is the sum of ``held`` over the open streams, and is counted in ``pool``
  too: every way out of a stream (answered, reset, expired, connection error,
  ``release``) gives its bytes back. Bounds checks are O(1) comparisons of counters.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Final

from tykworker.errors import H2ConnectionError
from tykworker.front.h2 import frames as f
from tykworker.front.h2.frames import ErrorCode, FrameType
from tykworker.front.h2.heads import (
    OK_TRAILERS,
    RESPONSE_HEADERS,
    Refusal,
    Status,
    http_refusal,
    status_fields,
    trailers_only,
)
from tykworker.front.h2.state import (
    ENDED,
    RESET_BY_PEER,
    RESET_BY_US,
    Budget,
    BufferPool,
    Limits,
    Stream,
)

_RECENT_CLOSED: Final = 1024
# One pack for: HEADERS frame (response headers) + DATA frame header + gRPC prefix.
_ANSWER_HEAD: Final = struct.Struct(f">BHBBL{len(RESPONSE_HEADERS)}sBHBBLBL")
_OK_TRAILERS_FRAME: Final = struct.Struct(f">BHBBL{len(OK_TRAILERS)}s")
PREFIX: Final = struct.Struct(">BL")


class StreamTable:
    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        pool: BufferPool | None = None,
    ) -> None:
        self.limits = limits
        #: bytes held for this connection: incomplete requests + answers held by flow
        #: control (never more than ``limits.connection_buffer`` + one frame's payload)
        self.buffered = 0
        self.pool = pool if pool is not None else BufferPool(1 << 62)
        #: why streams were refused or reset for memory or time: the driver logs them
        self.notices: list[str] = []
        self.closed = False
        self.draining = False
        self.error: tuple[ErrorCode, str] | None = None
        self.last_stream_id = 0
        self._control = Budget(limits.control_burst, limits.control_rate, clock)
        self._resets = Budget(limits.reset_burst, limits.reset_rate, clock)
        self._streams: dict[int, Stream] = {}
        self._zombies: set[int] = set()  # reset streams whose call is still running
        self._closed: dict[int, int] = {}  # recently closed stream id -> ENDED/RESET_*
        self._blocked: dict[int, None] = {}  # streams waiting for send window, in order
        self._out: list[bytes | bytearray | memoryview] = []
        self._conn_send_window = f.DEFAULT_WINDOW
        self._peer_initial_window = f.DEFAULT_WINDOW
        self._peer_max_frame = f.DEFAULT_MAX_FRAME

    # --- public: state and output ---------------------------------------------------------
    @property
    def idle(self) -> bool:
        """No stream owes an answer."""
        return not self._streams

    @property
    def finished(self) -> bool:
        """Nothing more will happen here: close the transport once the output is out."""
        return self.closed or (self.draining and not self._streams)

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def output(self) -> list[bytes | bytearray | memoryview]:
        """What ``data_to_send`` would join, as the pieces themselves (views into the
        answers), for a gathered write of large answers without copying them."""
        out, self._out = self._out, []
        return out

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def over_buffer(self, extra: int = 0) -> bool:
        """True if ``extra`` more bytes would pass the connection's or the pool's bound."""
        pool = self.pool
        return (
            self.buffered + extra > self.limits.connection_buffer or pool.used + extra > pool.limit
        )

    def expire(self, now: float, timeout: float) -> int:
        """Reset (RST_STREAM CANCEL) the streams that have waited on the client for
        ``timeout`` seconds: request not complete, or answer held by flow control. The
        wait starts at the first ``expire`` that sees the stream waiting (called by the
        driver every fraction of ``timeout``; no clock read per call). Returns how many."""
        late = []
        for stream in self._streams.values():
            if stream.remote_closed and not stream.out:
                stream.waiting_since = -1.0  # waiting for its worker, not for the client
            elif stream.waiting_since < 0:
                stream.waiting_since = now
            elif now - stream.waiting_since >= timeout:
                late.append(stream)
        for stream in late:
            self._out.append(f.rst_stream(stream.stream_id, ErrorCode.CANCEL))
            self._forget(stream, RESET_BY_US)
        if late:
            what = "answers not taken" if any(s.out for s in late) else "requests incomplete"
            self.notices.append(f"{len(late)} streams reset (CANCEL): {what} after {timeout:g} s")
        return len(late)

    def release(self) -> None:
        """The client is gone: give every byte counted for this connection back to the pool
        (its streams are dropped; answers that arrive later are ignored)."""
        for stream in self._streams.values():
            if stream.held:
                self._release(stream, stream.held)
        self._streams.clear()
        self._blocked.clear()
        self.closed = True

    # --- buffer accounting ----------------------------------------------------------------
    def _hold(self, stream: Stream, n: int) -> None:
        stream.held += n
        self.buffered += n
        self.pool.used += n

    def _release(self, stream: Stream, n: int) -> None:
        stream.held -= n
        self.buffered -= n
        self.pool.used -= n

    # --- public: answers ------------------------------------------------------------------
    def respond(self, stream_id: int, payload: bytes | bytearray) -> None:
        """The answer to a ``CallEvent``: HEADERS, DATA, trailers (grpc-status 0)."""
        self._zombies.discard(stream_id)
        stream = self._streams.get(stream_id)
        if stream is None or stream.answering:
            return
        self._control.refund()
        self._resets.refund(0.2)
        if len(payload) > self.limits.max_message:
            message = f"reply of {len(payload)} bytes exceeds the limit"
            self._answer_status(stream, Status.RESOURCE_EXHAUSTED, message)
            return
        n = len(payload) + 5
        stream.answering = True
        if n <= self._peer_max_frame and n <= self._conn_send_window and n <= stream.send_window:
            self._conn_send_window -= n
            stream.send_window -= n
            self._out += (
                _ANSWER_HEAD.pack(
                    0, len(RESPONSE_HEADERS), FrameType.HEADERS, f.END_HEADERS, stream_id,
                    RESPONSE_HEADERS, n >> 16, n & 0xFFFF, FrameType.DATA, 0, stream_id, 0, n - 5,
                ),
                payload,
                _OK_TRAILERS_FRAME.pack(
                    0, len(OK_TRAILERS), FrameType.HEADERS, f.END_HEADERS | f.END_STREAM,
                    stream_id, OK_TRAILERS,
                ),
            )  # fmt: skip
            self._close_answered(stream)
            return
        if self.over_buffer(n):  # the client does not take its answers: it gets a status
            message = f"answer of {n} bytes not held: {self.buffered} bytes of answers unread"
            self.notices.append(f"stream {stream_id}: {message}")
            self._answer_status(stream, Status.RESOURCE_EXHAUSTED, message)
            return
        self._out.append(headers_frame(stream_id, RESPONSE_HEADERS, end=False))
        # The prefix and the payload as they are (a large answer is not copied to join them)
        stream.out += (memoryview(PREFIX.pack(0, n - 5)), memoryview(payload))
        self._hold(stream, n)
        stream.trailers = OK_TRAILERS
        self._send(stream)

    def respond_status(self, stream_id: int, status: Status, message: str) -> None:
        """Answer a stream with a gRPC error status only (trailers-only)."""
        self._zombies.discard(stream_id)
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.answering:
            self._answer_status(stream, status, message)

    def start_stream(self, stream_id: int) -> bool:
        """Begin a server-streaming answer (response HEADERS); False if the stream is gone."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.answering:
            return False
        stream.answering = True
        self._out.append(headers_frame(stream_id, RESPONSE_HEADERS, end=False))
        return True

    def send_message(self, stream_id: int, payload: bytes) -> bool:
        """One more message of a streaming answer; False if the stream is gone."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return False
        if self.over_buffer(len(payload) + 5):
            self._answer_status(stream, Status.RESOURCE_EXHAUSTED, "messages not taken")
            return False
        stream.out.append(memoryview(PREFIX.pack(0, len(payload)) + payload))
        self._hold(stream, len(payload) + 5)
        self._send(stream)
        return True

    def finish(self, stream_id: int) -> None:
        """End a streaming answer with grpc-status 0 (after its queued messages)."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.trailers = OK_TRAILERS
            self._send(stream)

    # --- answers and stream ends ----------------------------------------------------------
    def _answer_status(self, stream: Stream, status: Status, message: str) -> None:
        """Trailers (or trailers-only) with a non-OK status; ends our side."""
        if stream.answering:
            block = status_fields(status, message)
        else:
            block = trailers_only(status, message)
        stream.answering = True
        stream.body = None
        stream.message = None
        stream.out.clear()
        if stream.held:
            self._release(stream, stream.held)
        self._blocked.pop(stream.stream_id, None)
        self._out.append(headers_frame(stream.stream_id, block, end=True))
        self._close_answered(stream)

    def _refuse(self, stream: Stream, refusal: Refusal | None) -> None:
        assert refusal is not None
        if refusal.http_status == 200:
            self._answer_status(stream, refusal.grpc_status, refusal.message)
            return
        stream.answering = True
        self._out.append(headers_frame(stream.stream_id, http_refusal(refusal), end=False))
        text = memoryview(refusal.message.encode() + b"\n")
        stream.out.append(text)
        self._hold(stream, len(text))
        stream.data_end = True
        self._send(stream)

    def _send(self, stream: Stream) -> None:
        """Send as much of ``stream.out`` as the windows allow, then the trailers. A DATA
        frame may gather several pieces (a 5-byte prefix and its payload go in one)."""
        sid = stream.stream_id
        pieces = stream.out
        while pieces:
            room = min(self._conn_send_window, stream.send_window, self._peer_max_frame)
            if room <= 0:
                self._blocked[sid] = None
                return
            header = len(self._out)
            self._out.append(b"")  # the frame header, once its length is known
            n = 0
            while pieces and n < room:
                piece = pieces[0]
                k = min(len(piece), room - n)
                if k == len(piece):
                    del pieces[0]
                else:
                    pieces[0] = piece[k:]
                    piece = piece[:k]
                if k:
                    self._out.append(piece)  # a view: copied once, by the write
                    n += k
            if not n:  # only empty pieces were left
                del self._out[header]
                break
            flags = f.END_STREAM if not pieces and stream.data_end else 0
            self._out[header] = f.frame_header(FrameType.DATA, flags, sid, n)
            self._conn_send_window -= n
            stream.send_window -= n
            self._release(stream, n)
        self._blocked.pop(sid, None)
        if stream.data_end:
            self._close_answered(stream)
        elif stream.trailers is not None:
            self._out.append(headers_frame(sid, stream.trailers, end=True))
            stream.trailers = None
            self._close_answered(stream)

    def _send_blocked(self) -> None:
        for sid in list(self._blocked):
            if self._conn_send_window <= 0:
                return
            stream = self._streams.get(sid)
            if stream is None or not stream.out:
                self._blocked.pop(sid, None)
            else:
                self._send(stream)

    def _close_answered(self, stream: Stream) -> None:
        """Our END_STREAM is out: close, or reset if the client is still sending."""
        if stream.remote_closed:
            self._forget(stream, ENDED)
        else:
            self._out.append(f.rst_stream(stream.stream_id, ErrorCode.NO_ERROR))
            self._forget(stream, RESET_BY_US)

    def _stream_error(self, stream_id: int, code: ErrorCode) -> None:
        self._spend(self._resets, "stream errors")
        self._out.append(f.rst_stream(stream_id, code))
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._forget(stream, RESET_BY_US)
        else:
            self._remember(stream_id, RESET_BY_US)

    def _forget(self, stream: Stream, how: int) -> None:
        sid = stream.stream_id
        del self._streams[sid]
        if stream.held:
            self._release(stream, stream.held)
        self._blocked.pop(sid, None)
        if stream.dispatched and not stream.answering:
            self._zombies.add(sid)
        self._remember(sid, how)

    def _remember(self, stream_id: int, how: int) -> None:
        closed = self._closed
        closed[stream_id] = how
        if len(closed) > 2 * _RECENT_CLOSED:  # keep the newest (dicts keep insertion order)
            self._closed = dict(list(closed.items())[-_RECENT_CLOSED:])

    def _late_frame(self, stream_id: int, stream: Stream | None, what: str) -> None:
        """DATA/HEADERS for a stream that is half-closed (remote), closed or never opened."""
        if stream is not None:  # half-closed (remote): stream error
            self._stream_error(stream_id, ErrorCode.STREAM_CLOSED)
            return
        if stream_id > self.last_stream_id:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, f"{what} on an idle stream")
        how = self._closed.get(stream_id)
        if how == ENDED:
            raise H2ConnectionError(ErrorCode.STREAM_CLOSED, f"{what} on a closed stream")
        if how == RESET_BY_PEER:
            self._stream_error(stream_id, ErrorCode.STREAM_CLOSED)
        elif how is None and what == "HEADERS":
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "stream id not increasing")
        # RESET_BY_US or long forgotten: frames that were in flight, ignored.

    def _spend(self, budget: Budget, what: str) -> None:
        if not budget.spend():
            raise H2ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, f"flood of {what}")

    def _fail(self, code: ErrorCode, message: str) -> None:
        self.error = (code, message)
        self._out.append(f.goaway(self.last_stream_id, code, message.encode()[:200]))
        self.closed = True
        for stream in self._streams.values():
            if stream.held:
                self._release(stream, stream.held)
        self._streams.clear()
        self._blocked.clear()


def headers_frame(stream_id: int, block: bytes, end: bool) -> bytes:
    flags = f.END_HEADERS | (f.END_STREAM if end else 0)
    return f.frame(FrameType.HEADERS, flags, stream_id, block)
