"""Sans-IO frame codec for the private bridge and the public raw socket.

Frame layout (all integers big-endian), 16-byte header then payload::

    offset  size  field
    0       2     magic   b"TW"
    2       1     version 1
    3       1     kind    FrameKind
    4       4     length  payload length in bytes (<= the decoder's max_payload)
    8       8     call_id chosen by the sender of a request, echoed by its reply
    16      len   payload

Payloads of DISPATCH/EVENT/REPLY are protobuf bytes passed through untouched
(``coprocess.Object``, ``coprocess.Event``, ``coprocess.Object``/``EventReply``);
DISPATCH_TRACED/EVENT_TRACED put a trace context prefix before them (tracecontext.py). Control
payloads (HELLO, DRAIN, STATUS...) are msgpack maps.

Invariants (h11-style):
* No I/O here. ``FrameDecoder.feed`` takes whatever bytes arrived; ``next_frame`` returns a
  complete ``Frame`` or ``None`` (need more data). Feeding byte by byte or all at once
  yields the same frames.
* A violation raises ``RemoteProtocolError`` once and leaves the decoder in ERROR: every later
  call raises again. The caller closes that channel.
* Decoding a large frame is linear: the buffer is compacted lazily and the header is parsed
  once per frame.

This module also holds the only other byte-level knowledge of the system:
``peek_object_header`` reads ``hook_type``/``hook_name`` from the top level of an encoded
``coprocess.Object`` without decoding nested messages (fields are skipped by length).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final, NoReturn

from tykworker.errors import LocalProtocolError, ProtocolError, RemoteProtocolError

MAGIC: Final = b"TW"
VERSION: Final = 1
HEADER: Final = struct.Struct(">2sBBIQ")
HEADER_SIZE: Final = HEADER.size  # 16
DEFAULT_MAX_PAYLOAD: Final = 64 * 1024 * 1024
#: Bridge decoders receive payloads this large into their own buffer (``direct_from``).
DIRECT_FROM: Final = 64 * 1024


class FrameKind(enum.IntEnum):
    """What a frame carries. Requests travel front->worker (or client->front on the raw
    socket); REPLY/ERROR travel back with the request's call id."""

    DISPATCH = 1  # payload: coprocess.Object
    EVENT = 2  # payload: coprocess.Event
    REPLY = 3  # payload: coprocess.Object (Dispatch) or coprocess.EventReply (Event)
    ERROR = 4  # payload: UTF-8 text; raw socket only, for frames that cannot be served
    # Bridge only (front -> worker), for calls that carry a trace context: payload is the
    # wire.tracecontext prefix, then the same bytes as DISPATCH/EVENT.
    DISPATCH_TRACED = 5
    EVENT_TRACED = 6
    HELLO = 10  # worker -> front: msgpack {pid, generation, index}; worker is READY
    DRAIN = 11  # worker -> front: send me no more calls, close when my call is done
    CONTROL = 12  # msgpack map: status pipe to the supervisor; worker -> front "failed"
    # front -> worker, the first frame of a bridge connection: no payload; carries the
    # worker's reply journal (wire/journal.py) as an SCM_RIGHTS descriptor, or none.
    JOURNAL = 13


#: Byte value -> kind: a dict lookup per frame, not an Enum call (its cost shows per call).
_KINDS: Final = {int(k): k for k in FrameKind}

Payload = bytes | bytearray
"""A frame's payload: ``bytes``, or the ``bytearray`` a ``direct_from`` decoder filled."""


@dataclass(slots=True, init=False)
class Frame:
    """One decoded frame. Made for every frame on the bridge: not frozen and ``__init__``
    written out (tykworker/compiled.py); no one changes a frame ``FrameDecoder`` made."""

    kind: FrameKind
    call_id: int
    payload: Payload

    def __init__(self, kind: FrameKind, call_id: int, payload: Payload) -> None:
        self.kind = kind
        self.call_id = call_id
        self.payload = payload


def encode_frame(kind: FrameKind, call_id: int, payload: Payload = b"") -> bytes:
    """Header + payload as one bytes object.

    Raises ``LocalProtocolError`` if ``call_id`` is outside 0..2**64-1 or the payload is 4 GiB
    or more (the header cannot represent them).
    """
    return encode_header(kind, call_id, len(payload)) + payload


def encode_header(kind: FrameKind | int, call_id: int, length: int) -> bytes:
    """Just the header, for writers that send a large payload without copying it.

    Raises ``LocalProtocolError`` like ``encode_frame``.
    """
    try:
        return HEADER.pack(MAGIC, VERSION, kind, length, call_id)
    except struct.error as exc:
        # This module raises only ProtocolError subclasses (errors.py).
        raise LocalProtocolError(f"cannot encode a frame header: {exc}") from exc


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes, then call ``next_frame`` until it returns None.

    With ``direct_from`` set (the bridge: both ends are tykworker's own processes), a frame
    whose payload is at least that large is not gathered in the decoder's buffer: once its
    header is parsed, the payload gets a buffer of its exact size, the bytes already
    buffered are moved there, later ``feed`` calls copy straight into it, and a reader may
    even receive into it (``direct_buffer``/``advance``). Its ``Frame.payload`` is that
    ``bytearray``, not a copy. The public raw socket leaves it off: a client's header alone
    must not make the front allocate what the client has not sent.
    """

    __slots__ = ("_big", "_buf", "_direct", "_error", "_filled", "_max", "_pending", "_pos")

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD, direct_from: int = 0) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max = max_payload
        self._pending: tuple[FrameKind, int, int] | None = None  # parsed header
        self._error: ProtocolError | None = None
        self._direct = direct_from if direct_from > 0 else max_payload + 1
        self._big: bytearray | None = None  # the payload of the pending large frame
        self._filled = 0  # bytes of ``_big`` received

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        pending = HEADER_SIZE + self._filled if self._big is not None else 0
        return len(self._buf) - self._pos + pending

    @property
    def in_error(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        big = self._big
        if big is not None:
            room = len(big) - self._filled
            if len(data) <= room:
                big[self._filled : self._filled + len(data)] = data
                self._filled += len(data)
                return
            with memoryview(data) as view:
                big[self._filled :] = view[:room]
                self._filled += room
                self._append(view[room:])
            return
        self._append(data)

    def _append(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def direct_buffer(self) -> memoryview | None:
        """Where the rest of a pending large payload goes, for ``recv_into``; None when no
        large frame is pending (read into your own buffer and ``feed``). After receiving
        ``n`` bytes into it, call ``advance(n)``."""
        big = self._big
        if big is None or self._filled == len(big):
            return None
        return memoryview(big)[self._filled :]

    def advance(self, n: int) -> None:
        """``n`` bytes were received into the view ``direct_buffer`` returned."""
        self._filled += n

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None when more bytes are needed."""
        if self._error is not None:
            raise self._error
        if self._big is not None:
            return self._big_frame()
        if self._pending is None:
            if len(self._buf) - self._pos < HEADER_SIZE:
                return None
            self._pending = self._parse_header()
        kind, length, call_id = self._pending
        end = self._pos + HEADER_SIZE + length
        if len(self._buf) < end:
            if length >= self._direct:
                self._start_big(length)
                return self._big_frame()
            return None
        with memoryview(self._buf) as view:  # one copy (slicing a bytearray copies twice)
            payload = bytes(view[self._pos + HEADER_SIZE : end])
        self._pending = None
        self._pos = end
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        return Frame(kind, call_id, payload)

    def _start_big(self, length: int) -> None:
        """Move the pending frame's payload bytes out of ``_buf`` into their own buffer."""
        start = self._pos + HEADER_SIZE
        have = len(self._buf) - start
        big = bytearray(length)
        with memoryview(self._buf) as view:
            big[:have] = view[start:]
        self._big, self._filled = big, have
        self._buf.clear()
        self._pos = 0

    def _big_frame(self) -> Frame | None:
        big = self._big
        if big is None or self._filled < len(big) or self._pending is None:
            return None
        kind, _, call_id = self._pending
        self._big, self._filled, self._pending = None, 0, None
        return Frame(kind, call_id, big)

    def _parse_header(self) -> tuple[FrameKind, int, int]:
        magic, version, kind, length, call_id = HEADER.unpack_from(self._buf, self._pos)
        if magic != MAGIC:
            self._fail(f"bad magic {bytes(magic)!r} (expected {MAGIC!r})")
        if version != VERSION:
            self._fail(f"unsupported frame version {version}")
        frame_kind = _KINDS.get(kind)
        if frame_kind is None:
            self._fail(f"unknown frame kind {kind}")
        if length > self._max:
            self._fail(f"frame payload of {length} bytes exceeds the limit of {self._max}")
        return frame_kind, length, call_id

    def _fail(self, message: str) -> NoReturn:
        self._error = RemoteProtocolError(message)
        raise self._error


# --- top-level peek into an encoded coprocess.Object ----------------------------------

_WIRE_VARINT: Final = 0
_WIRE_I64: Final = 1
_WIRE_LEN: Final = 2
_WIRE_I32: Final = 5


def _read_varint(data: Payload, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def peek_object_header(data: Payload) -> tuple[int, str]:
    """``(hook_type, hook_name)`` from the top level of an encoded ``coprocess.Object``.

    Nested messages are skipped by their length prefix, so the cost is proportional to
    the number of top-level fields (a handful), not to the payload size. Returns
    ``(0, "")`` for anything that does not look like a valid Object; never raises.
    Every field is read (a repeated scalar's last value wins, as in protobuf); one-byte
    keys and lengths, nearly all of them, are read inline (it runs once per call in the
    front and in the worker: ~1 µs instead of ~3).
    """
    hook_type, hook_name, pos, end = 0, "", 0, len(data)
    try:
        while pos < end:
            key = data[pos]
            pos += 1
            if key & 0x80:
                key, pos = _read_varint(data, pos - 1)
            wire = key & 7
            if wire == _WIRE_LEN:
                length = data[pos] if pos < end else 0x80
                pos += 1
                if length & 0x80:
                    length, pos = _read_varint(data, pos - 1)
                if pos + length > end:
                    raise ValueError("truncated field")
                if key == 0x12:  # field 2, hook_name
                    hook_name = data[pos : pos + length].decode("utf-8", "replace")
                pos += length
            elif wire == _WIRE_VARINT:
                value, pos = _read_varint(data, pos)
                if key == 0x08:  # field 1, hook_type: an int32 enum, sign-extended
                    hook_type = (value & 0xFFFFFFFF) - ((value & 0x80000000) << 1)
            elif wire == _WIRE_I64:
                pos += 8
            elif wire == _WIRE_I32:
                pos += 4
            else:
                raise ValueError(f"unsupported wire type {wire}")
            if pos > end:
                raise ValueError("truncated fixed-width field")
    except ValueError:
        return 0, ""
    return hook_type, hook_name
