"""Sans-IO HTTP/2 server connection for unary gRPC calls: the native front's core.

Bytes in (``receive``), complete calls out (``CallEvent``), answers in (``respond``, from
``h2streams.StreamTable``), bytes out (``data_to_send``). No sockets, no asyncio, no clock
except the injected one used by the flood budgets. h2c with prior knowledge (RFC 9113
§3.3), as grpc-go dials.

What it does with each frame, briefly: HEADERS (+CONTINUATION) -> HPACK via
``h2grpc.HeaderDecoder`` -> a stream; DATA -> the stream's body, checked against the
5-byte gRPC prefix; END_STREAM with exactly one message -> ``CallEvent``. Answers are
HEADERS + DATA + trailers, DATA split at the peer's MAX_FRAME_SIZE and held back while the
peer's connection or stream window is short; the trailers follow the last DATA byte.
PING is answered in the same output as the answers produced by the same read.

Invariants:
* Every call event gets at most one answer on the wire; ``respond`` for a stream that was
  reset or refused meanwhile is dropped.
* After a connection error: one GOAWAY with the error code is queued, ``closed`` is set and
  every later input is dropped. ``receive`` never raises for any input.
* Every header block is HPACK-decoded, including blocks of refused or ignored streams.
* The input buffer holds at most one incomplete frame; a partial frame is not re-parsed
  until enough bytes for it have arrived (no quadratic cost for large frames).
* Connection receive credit is returned as DATA is read; stream windows fit a whole
  message. What that lets a client send is bounded by ``buffered`` instead: incomplete
  requests + answers held by flow control never pass ``limits.connection_buffer`` (nor the
  pool's limit over all connections): the DATA frame that would is a stream error
  ENHANCE_YOUR_CALM, a new stream without room for one whole message is REFUSED_STREAM,
  an answer that does not fit is RESOURCE_EXHAUSTED (``streams.py``).
* No reference cycle: a connection is freed by reference counting once its driver drops it.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Final

import hpack

from tykworker.errors import H2ConnectionError
from tykworker.front.h2 import frames as f
from tykworker.front.h2.frames import ErrorCode, FrameType, Setting
from tykworker.front.h2.heads import HeaderDecoder, Status, trailers_valid
from tykworker.front.h2.state import (
    RESET_BY_PEER,
    RESET_BY_US,
    BufferPool,
    CallEvent,
    Limits,
    Stream,
)
from tykworker.front.h2.streams import PREFIX, StreamTable

CONN_WINDOW: Final = f.MAX_WINDOW
_U32: Final = struct.Struct(">L")


class H2Connection(StreamTable):
    """One client connection, server side."""

    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        pool: BufferPool | None = None,
    ) -> None:
        super().__init__(limits, clock, pool)
        self._decoder = HeaderDecoder(
            limits.max_header_list, limits.hard_header_list, limits.trace_context
        )
        self._events: list[CallEvent] = []
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._needed = len(f.PREFACE)
        self._preface_done = False
        self._settings_seen = False
        self._block: list[bytes] | None = None  # header block awaiting CONTINUATION
        self._block_stream = 0
        self._block_flags = 0
        self._block_bad_priority = False
        self._recv_window = CONN_WINDOW
        self._recv_unacked = 0
        settings = {
            Setting.MAX_CONCURRENT_STREAMS: limits.max_streams,
            Setting.INITIAL_WINDOW_SIZE: limits.stream_window,
            Setting.MAX_HEADER_LIST_SIZE: limits.max_header_list,
        }
        self._out += [f.settings(settings), f.window_update(0, CONN_WINDOW - f.DEFAULT_WINDOW)]

    # --- public API -----------------------------------------------------------------------
    @property
    def started(self) -> bool:
        """The client's preface and first SETTINGS frame have arrived."""
        return self._settings_seen

    def receive(self, data: bytes) -> list[CallEvent]:
        """Feed bytes read from the peer; returns the calls they complete."""
        if self.closed or not data:
            return []
        if self._pending or len(data) < self._needed:
            self._pending.append(data)
            self._pending_len += len(data)
            if self._pending_len < self._needed:
                if not self._preface_done:
                    self._check_partial_preface()
                return []
            data = b"".join(self._pending)
            self._pending.clear()
        events = self._events = []
        try:
            pos = self._parse(data)
        except H2ConnectionError as fault:
            self._fail(ErrorCode(fault.code), str(fault))
            self._pending.clear()
            self._pending_len = 0
            return []
        self._pending_len = len(data) - pos
        if self._pending_len:
            self._pending.append(data[pos:])
        if self._recv_unacked >= CONN_WINDOW // 4:
            self._out.append(f.window_update(0, self._recv_unacked))
            self._recv_window += self._recv_unacked
            self._recv_unacked = 0
        self._events = []
        return events

    def drain(self) -> None:
        """GOAWAY(NO_ERROR): streams opened so far are served, later ones ignored."""
        if not self.draining and not self.closed:
            self.draining = True
            self._out.append(f.goaway(self.last_stream_id, ErrorCode.NO_ERROR))

    # --- parsing --------------------------------------------------------------------------
    def _check_partial_preface(self) -> None:
        head = b"".join(self._pending)[: len(f.PREFACE)]
        if not f.PREFACE.startswith(head):
            self._fail(ErrorCode.PROTOCOL_ERROR, "invalid connection preface")

    def _parse(self, data: bytes) -> int:
        pos = 0
        if not self._preface_done:
            if data[: len(f.PREFACE)] != f.PREFACE:
                raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "invalid connection preface")
            pos = len(f.PREFACE)
            self._preface_done = True
        view = memoryview(data)
        size = len(data)
        while size - pos >= f.HEADER_SIZE:
            hi, lo, kind, flags, stream_id = f.FRAME_HEADER.unpack_from(data, pos)
            length = hi << 16 | lo
            if length > f.DEFAULT_MAX_FRAME:
                raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes")
            end = pos + f.HEADER_SIZE + length
            if end > size:
                self._needed = end - pos
                return pos
            self._frame(kind, flags, stream_id & f.STREAM_MASK, view[pos + f.HEADER_SIZE : end])
            pos = end
            if self.closed:
                return size
        self._needed = f.HEADER_SIZE
        return pos

    def _frame(self, kind: int, flags: int, stream_id: int, payload: memoryview) -> None:
        if self._block is not None and kind != FrameType.CONTINUATION:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "header block interrupted")
        if not self._settings_seen and kind != FrameType.SETTINGS:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "preface not followed by SETTINGS")
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, flags, stream_id, payload)
        elif not self._control.spend():  # unknown frame types are ignored (RFC 9113 §5.5)
            raise H2ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, "too many unknown frames")

    # --- DATA -----------------------------------------------------------------------------
    def _on_data(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        if size > self._recv_window:
            raise H2ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "connection window exceeded")
        self._recv_window -= size
        self._recv_unacked += size
        data = _unpad(flags, payload)
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            self._late_frame(stream_id, stream, "DATA")
            return
        if size > stream.recv_window:
            self._stream_error(stream_id, ErrorCode.FLOW_CONTROL_ERROR)
            return
        stream.recv_window -= size
        end = flags & f.END_STREAM
        if end:
            stream.remote_closed = True  # an answer given while reading this frame needs no RST
        elif not data:
            self._spend(self._control, "empty DATA frames")
        stream.received += len(data)
        length = stream.head.content_length
        if length is not None and stream.received > length:
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR)
            return
        if stream.head.refusal is not None or stream.answering:
            if stream.received > self.limits.discard_limit and not stream.answering:
                self._refuse(stream, stream.head.refusal)
        elif data:
            self._body(stream, data)
        if end and stream_id in self._streams:
            self._end_of_request(stream)

    def _body(self, stream: Stream, data: memoryview) -> None:
        """Gather the request message. Its 5-byte gRPC prefix says how long it is: a
        message in one DATA frame (the common case) is copied out once; a longer one gets
        a buffer of its exact size, reserved in the memory bounds at once (what the client
        announced, not only what it sent so far), and each DATA frame is copied into it.
        No buffer grows, and nothing is copied again at the end."""
        message = stream.message
        if message is not None:  # a preallocated message being filled
            filled = stream.filled
            n = len(data)
            if filled + n > len(message) or isinstance(message, bytes):
                self._answer_status(stream, Status.INTERNAL, "more than one request message")
                return
            message[filled : filled + n] = data
            stream.filled = filled + n
            return
        if stream.body is None and len(data) >= 5:
            source = data
        else:  # the prefix is split over DATA frames (rare): gather it first
            if not self._take(stream, len(data)):
                return
            if stream.body is None:
                stream.body = bytearray()
            stream.body += data
            if len(stream.body) < 5:
                return
            source = memoryview(stream.body)
        flag, length = PREFIX.unpack_from(source)
        problem = self._prefix_problem(flag, length)
        if problem is not None:
            self._answer_status(stream, *problem)
            return
        rest = source[5:]
        if len(rest) > length:
            self._answer_status(stream, Status.INTERNAL, "more than one request message")
            return
        if not self._take(stream, 5 + length - stream.held):
            return
        if len(rest) == length:
            stream.message = bytes(rest)
        else:
            buffer = bytearray(length)
            buffer[: len(rest)] = rest
            stream.message = buffer
        stream.filled = len(rest)
        stream.body = None

    def _take(self, stream: Stream, n: int) -> bool:
        """Count ``n`` more bytes held for ``stream``'s request; False (and the stream is
        reset) if that passes the connection's or the pool's bound."""
        pool = self.pool
        if self.buffered + n > self.limits.connection_buffer or pool.used + n > pool.limit:
            self._over_buffer(stream)
            return False
        stream.held += n  # _hold, inline: this is every call's path
        self.buffered += n
        pool.used += n
        return True

    def _over_buffer(self, stream: Stream) -> None:
        """Incomplete requests would hold more than the bound: RST_STREAM(ENHANCE_YOUR_CALM)."""
        self.notices.append(
            f"stream {stream.stream_id} reset (ENHANCE_YOUR_CALM): incomplete requests hold "
            f"{self.buffered} bytes on this connection, {self.pool.used} in all "
            f"(bounds {self.limits.connection_buffer} and {self.pool.limit})"
        )
        self._stream_error(stream.stream_id, ErrorCode.ENHANCE_YOUR_CALM)

    def _prefix_problem(self, flag: int, length: int) -> tuple[Status, str] | None:
        if flag == 1:
            return Status.UNIMPLEMENTED, "compressed messages are not supported"
        if flag != 0:
            return Status.INTERNAL, f"invalid message flag {flag}"
        if length > self.limits.max_message:
            limit = self.limits.max_message
            return Status.RESOURCE_EXHAUSTED, f"message of {length} bytes exceeds {limit}"
        return None

    def _end_of_request(self, stream: Stream) -> None:
        stream.remote_closed = True
        head = stream.head
        if head.content_length is not None and stream.received != head.content_length:
            self._stream_error(stream.stream_id, ErrorCode.PROTOCOL_ERROR)
            return
        if stream.answering:  # a refusal still being sent: it closes the stream when done
            return
        if head.refusal is not None:
            self._refuse(stream, head.refusal)
            return
        message = stream.message
        if message is not None and stream.filled != len(message):
            message = None  # truncated
        stream.body = None
        stream.message = None
        held = stream.held
        if held:  # the message leaves the buffer (the driver counts calls in flight); inline
            stream.held = 0
            self.buffered -= held
            self.pool.used -= held
        if message is None or (head.kind is None and not head.health):
            what = "a truncated message" if stream.received else "no message"
            self._answer_status(stream, Status.INTERNAL, f"request ended with {what}")
            return
        stream.dispatched = head.health != "Watch"  # a Watch is not a call of the router
        event = CallEvent(
            stream.stream_id, head.kind, message, head.timeout, head.health, head.trace
        )
        self._events.append(event)

    # --- HEADERS and CONTINUATION ---------------------------------------------------------
    def _on_headers(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        block = _unpad(flags, payload)
        bad_priority = False
        if flags & f.PRIORITY_FLAG:
            if len(block) < 5:
                raise H2ConnectionError(
                    ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for priority"
                )
            bad_priority = _U32.unpack_from(block)[0] & f.STREAM_MASK == stream_id
            block = block[5:]
        if flags & f.END_HEADERS:
            self._header_block(stream_id, flags, bytes(block), bad_priority)
            return
        self._block = [bytes(block)]
        self._block_stream = stream_id
        self._block_flags = flags
        self._block_bad_priority = bad_priority

    def _on_continuation(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if self._block is None or stream_id != self._block_stream:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
        self._block.append(bytes(payload))
        if len(self._block) > self.limits.max_continuations:
            raise H2ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, "too many CONTINUATION frames")
        if sum(map(len, self._block)) > self.limits.max_header_block:
            raise H2ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if flags & f.END_HEADERS:
            block, self._block = b"".join(self._block), None
            self._header_block(stream_id, self._block_flags, block, self._block_bad_priority)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        try:
            return self._decoder.decode(block)
        except _HPACK_ERRORS as exc:
            raise _hpack_error(exc) from exc

    def _header_block(self, stream_id: int, flags: int, block: bytes, bad_priority: bool) -> None:
        if stream_id % 2 == 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "even stream id from a client")
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._trailers(stream, flags, self._decode(block))
        elif stream_id <= self.last_stream_id:
            self._decode(block)
            self._late_frame(stream_id, None, "HEADERS")
        else:
            self._new_stream(stream_id, flags, block, bad_priority)

    def _trailers(self, stream: Stream, flags: int, headers: list[tuple[bytes, bytes]]) -> None:
        if stream.remote_closed:
            self._late_frame(stream.stream_id, stream, "HEADERS")
        elif not flags & f.END_STREAM or not trailers_valid(headers):
            self._stream_error(stream.stream_id, ErrorCode.PROTOCOL_ERROR)
        else:
            self._end_of_request(stream)

    def _new_stream(self, stream_id: int, flags: int, block: bytes, bad_priority: bool) -> None:
        try:  # not a context manager: this runs once per call
            head = self._decoder.request(block)
        except _HPACK_ERRORS as exc:
            raise _hpack_error(exc) from exc
        self.last_stream_id = stream_id
        if self.draining:  # after GOAWAY: ignored, the client retries elsewhere
            self._remember(stream_id, RESET_BY_US)
            return
        if bad_priority or head.malformed is not None:
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR)
            return
        limits = self.limits
        if len(self._streams) + len(self._zombies) >= limits.max_streams:
            self._stream_error(stream_id, ErrorCode.REFUSED_STREAM)
            return
        pool = self.pool
        room = limits.connection_buffer - self.buffered
        if room < limits.max_message or pool.limit - pool.used < limits.max_message:
            self.notices.append(
                f"stream {stream_id} refused (REFUSED_STREAM): {self.buffered} bytes held for "
                f"this connection, {self.pool.used} in all: no room for one more message"
            )
            self._stream_error(stream_id, ErrorCode.REFUSED_STREAM)
            return
        stream = Stream(stream_id, head, limits.stream_window, self._peer_initial_window)
        self._streams[stream_id] = stream
        if flags & f.END_STREAM:
            self._end_of_request(stream)
        elif head.refusal is not None and not head.refusal.deferred:
            self._refuse(stream, head.refusal)

    # --- other frames ---------------------------------------------------------------------
    def _on_priority(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id == 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        self._spend(self._control, "PRIORITY frames")
        if len(payload) != 5:
            self._stream_error(stream_id, ErrorCode.FRAME_SIZE_ERROR)
        elif _U32.unpack_from(payload)[0] & f.STREAM_MASK == stream_id:
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR)

    def _on_rst_stream(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM length")
        if stream_id == 0 or stream_id > self.last_stream_id:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._spend(self._resets, "stream resets")
            self._forget(stream, RESET_BY_PEER)

    def _on_settings(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if len(payload):
                raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length")
        if self._settings_seen:
            self._spend(self._control, "SETTINGS frames")
        self._settings_seen = True
        for pos in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HL", payload, pos)
            self._setting(key, value)
        self._out.append(f.SETTINGS_ACK)
        self._send_blocked()

    def _setting(self, key: int, value: int) -> None:
        if key == Setting.ENABLE_PUSH and value > 1:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
        if key == Setting.INITIAL_WINDOW_SIZE:
            if value > f.MAX_WINDOW:
                raise H2ConnectionError(
                    ErrorCode.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large"
                )
            delta = value - self._peer_initial_window
            self._peer_initial_window = value
            for stream in self._streams.values():
                stream.send_window += delta
                if stream.send_window > f.MAX_WINDOW:
                    raise H2ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "stream window overflow")
        elif key == Setting.MAX_FRAME_SIZE:
            if not f.DEFAULT_MAX_FRAME <= value <= f.MAX_FRAME_LIMIT:
                raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
            self._peer_max_frame = value
        # HEADER_TABLE_SIZE: our encoder never uses its dynamic table. Others: not ours.

    def _on_push_promise(self, flags: int, stream_id: int, payload: memoryview) -> None:
        raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client")

    def _on_ping(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "PING length")
        if not flags & f.ACK:
            self._spend(self._control, "PING frames")
            self._out.append(f.ping_ack(bytes(payload)))

    def _on_goaway(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if stream_id != 0:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY length")
        # The client opens no more streams; those it has get their answers.

    def _on_window_update(self, flags: int, stream_id: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise H2ConnectionError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
        increment = _U32.unpack_from(payload)[0] & f.STREAM_MASK
        if stream_id == 0:
            if increment == 0:
                raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._conn_send_window += increment
            if self._conn_send_window > f.MAX_WINDOW:
                raise H2ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, "connection window overflow")
            self._send_blocked()
            return
        if stream_id > self.last_stream_id:
            raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # closed: updates may still be in flight
        if increment == 0:
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > f.MAX_WINDOW:
            self._stream_error(stream_id, ErrorCode.FLOW_CONTROL_ERROR)
        elif stream.out:
            self._send(stream)


def _unpad(flags: int, payload: memoryview) -> memoryview:
    if not flags & f.PADDED:
        return payload
    if not len(payload) or payload[0] >= len(payload):
        raise H2ConnectionError(ErrorCode.PROTOCOL_ERROR, "invalid padding")
    return payload[1 : len(payload) - payload[0]]


#: What decoding a header block may raise (``OversizedHeaderListError`` is an ``HPACKError``).
_HPACK_ERRORS: Final = (hpack.HPACKError, IndexError, ValueError)


def _hpack_error(exc: BaseException) -> H2ConnectionError:
    """The one mapping of header-block decoding failures (``_HPACK_ERRORS``) to connection
    errors (RFC 9113 §4.3): an oversized list is ENHANCE_YOUR_CALM, anything else
    COMPRESSION_ERROR."""
    if isinstance(exc, hpack.OversizedHeaderListError):
        return H2ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, "header list too large")
    return H2ConnectionError(ErrorCode.COMPRESSION_ERROR, f"HPACK: {exc}")


#: Frame type -> handler. Unbound functions on the class, not bound methods stored on each
#: connection: a dict of bound methods would be a reference cycle (connection -> dict ->
#: method -> connection), freed only by the cyclic GC, holding every buffered body with it.
_HANDLERS: Final[dict[int, Callable[[H2Connection, int, int, memoryview], None]]] = {
    FrameType.DATA: H2Connection._on_data,
    FrameType.HEADERS: H2Connection._on_headers,
    FrameType.PRIORITY: H2Connection._on_priority,
    FrameType.RST_STREAM: H2Connection._on_rst_stream,
    FrameType.SETTINGS: H2Connection._on_settings,
    FrameType.PUSH_PROMISE: H2Connection._on_push_promise,
    FrameType.PING: H2Connection._on_ping,
    FrameType.GOAWAY: H2Connection._on_goaway,
    FrameType.WINDOW_UPDATE: H2Connection._on_window_update,
    FrameType.CONTINUATION: H2Connection._on_continuation,
}
