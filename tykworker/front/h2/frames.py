"""HTTP/2 wire constants and frame encoders for the native front (RFC 9113). No I/O.

Only what a server of unary gRPC calls needs: frame types, flags, error codes, settings
identifiers, and encoders for the frames the server sends. Parsing lives in ``h2conn``
(it is interleaved with connection state).

Invariants:
* Every encoder returns complete frames (9-byte header + payload) ready to be written.
* ``data_frames`` never emits a frame longer than the ``max_frame`` it is given.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER: Final = struct.Struct(">BHBBL")  # length hi 8 bits, lo 16 bits, type, flags, id
HEADER_SIZE: Final = 9
DEFAULT_WINDOW: Final = 65_535
DEFAULT_MAX_FRAME: Final = 16_384
MAX_FRAME_LIMIT: Final = (1 << 24) - 1
MAX_WINDOW: Final = (1 << 31) - 1
STREAM_MASK: Final = 0x7FFF_FFFF


class FrameType(enum.IntEnum):
    DATA = 0
    HEADERS = 1
    PRIORITY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PUSH_PROMISE = 5
    PING = 6
    GOAWAY = 7
    WINDOW_UPDATE = 8
    CONTINUATION = 9


# Flags (same bit means different things per frame type).
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    SETTINGS_TIMEOUT = 4
    STREAM_CLOSED = 5
    FRAME_SIZE_ERROR = 6
    REFUSED_STREAM = 7
    CANCEL = 8
    COMPRESSION_ERROR = 9
    CONNECT_ERROR = 10
    ENHANCE_YOUR_CALM = 11
    INADEQUATE_SECURITY = 12
    HTTP_1_1_REQUIRED = 13


class Setting(enum.IntEnum):
    HEADER_TABLE_SIZE = 1
    ENABLE_PUSH = 2
    MAX_CONCURRENT_STREAMS = 3
    INITIAL_WINDOW_SIZE = 4
    MAX_FRAME_SIZE = 5
    MAX_HEADER_LIST_SIZE = 6


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One complete frame."""
    n = len(payload)
    return FRAME_HEADER.pack(n >> 16, n & 0xFFFF, kind, flags, stream_id) + payload


def frame_header(kind: int, flags: int, stream_id: int, length: int) -> bytes:
    return FRAME_HEADER.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


def settings(values: dict[Setting, int]) -> bytes:
    body = b"".join(struct.pack(">HL", key, value) for key, value in values.items())
    return frame(FrameType.SETTINGS, 0, 0, body)


SETTINGS_ACK: Final = frame(FrameType.SETTINGS, ACK, 0)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(FrameType.WINDOW_UPDATE, 0, stream_id, struct.pack(">L", increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(FrameType.RST_STREAM, 0, stream_id, struct.pack(">L", code))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(FrameType.GOAWAY, 0, 0, struct.pack(">LL", last_stream_id, code) + debug)


def ping_ack(opaque: bytes) -> bytes:
    return frame(FrameType.PING, ACK, 0, opaque)


def data_frames(stream_id: int, data: memoryview, max_frame: int, end: bool) -> list[bytes]:
    """``data`` as DATA frames of at most ``max_frame`` bytes; END_STREAM on the last if
    ``end``. Empty ``data`` gives one empty frame (only useful with ``end``)."""
    out: list[bytes] = []
    total = len(data)
    pos = 0
    while True:
        n = min(max_frame, total - pos)
        last = pos + n >= total
        flags = END_STREAM if (last and end) else 0
        out.append(frame_header(FrameType.DATA, flags, stream_id, n))
        out.append(bytes(data[pos : pos + n]))
        pos += n
        if last:
            return out
