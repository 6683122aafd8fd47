"""Trace context carried from the front to a worker: the byte layout of the bridge's
``DISPATCH_TRACED``/``EVENT_TRACED`` frames. No I/O, no OpenTelemetry import.

The front never interprets a trace context: it copies the propagation headers of the call
(W3C ``traceparent``/``tracestate``/``baggage``, B3 ``b3`` and ``x-b3-*``) as they arrived
into a *carrier*, and the worker hands them to the OpenTelemetry propagators.

Carrier layout (all integers big-endian), a sequence of entries::

    size  field
    1     code   index of the header name in ``FIELDS``, plus 1
    2     length of the value in bytes (<= MAX_VALUE)
    len   value  the header's value, as received (latin-1 bytes)

Payload of a traced frame: a prefix, then the Object (or Event) bytes, untouched::

    offset  size  field
    0       2     n        bytes of the prefix after this field (16 + carrier length)
    2       8     arrived  float64: when the front received the call (CLOCK_MONOTONIC s)
    10      8     sent     float64: when the front wrote it to a worker (same clock)
    18      n-16  carrier
    2+n     ...   payload  coprocess.Object / coprocess.Event bytes

CLOCK_MONOTONIC is one clock for every process of a Linux host, so the worker can place
both instants on its own timeline.

Invariants:
* A header list without any propagation header gives no carrier (``None``): such calls
  travel in the plain DISPATCH/EVENT frames, byte for byte as without tracing.
* A value longer than ``MAX_VALUE``, or one after ``MAX_ENTRIES`` entries, is left out
  (never truncated: a truncated ``tracestate`` would be wrong, a missing one is allowed);
  a carrier is therefore at most ``MAX_ENTRIES * (3 + MAX_VALUE)`` bytes.
* ``split`` never raises anything but ``ValueError``, for a prefix that does not fit.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

#: Propagation header names carried, lower case as HTTP/2 sends them.
FIELDS: Final = (
    b"traceparent",
    b"tracestate",
    b"baggage",
    b"b3",
    b"x-b3-traceid",
    b"x-b3-spanid",
    b"x-b3-parentspanid",
    b"x-b3-sampled",
    b"x-b3-flags",
)
_CODES: Final = {name: code for code, name in enumerate(FIELDS, 1)}
_STR_CODES: Final = {name.decode(): code for name, code in _CODES.items()}
MAX_VALUE: Final = 4096
MAX_ENTRIES: Final = 16
_ENTRY: Final = struct.Struct(">BH")
_PREFIX: Final = struct.Struct(">Hdd")
PREFIX_SIZE: Final = _PREFIX.size  # 18, plus the carrier


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A traced frame's prefix, decoded: the headers by name, and the front's instants."""

    headers: dict[str, str]
    arrived: float
    sent: float

    @property
    def queue_wait(self) -> float:
        """Seconds the call waited in the front for a worker (>= 0)."""
        return max(0.0, self.sent - self.arrived)


def _entry(code: int, value: bytes) -> bytes:
    return _ENTRY.pack(code, len(value)) + value


def carrier_of(headers: Mapping[bytes, bytes]) -> bytes | None:
    """The carrier of a header map with lower-case byte names (the native front's decoded
    request head), or None when it holds no propagation header."""
    out = b""
    entries = 0
    for name, code in _CODES.items():
        value = headers.get(name)
        if value is not None and len(value) <= MAX_VALUE and entries < MAX_ENTRIES:
            out += _entry(code, value)
            entries += 1
    return out or None


def carrier_of_pairs(pairs: Iterable[tuple[str, str | bytes]]) -> bytes | None:
    """The carrier of gRPC metadata pairs (grpcio's ``invocation_metadata()``: names are
    lower case; binary ``-bin`` values are never propagation headers). First value of a
    repeated name wins, as in ``carrier_of``."""
    out = b""
    seen: set[int] = set()
    for name, value in pairs:
        code = _STR_CODES.get(name)
        if code is None or code in seen or not isinstance(value, str):
            continue
        data = value.encode("latin-1", "replace")
        if len(data) <= MAX_VALUE and len(seen) < MAX_ENTRIES:
            out += _entry(code, data)
            seen.add(code)
    return out or None


def prefix(carrier: bytes, arrived: float, sent: float) -> bytes:
    """The prefix of a traced frame's payload (the Object follows it)."""
    return _PREFIX.pack(PREFIX_SIZE - 2 + len(carrier), arrived, sent) + carrier


def decode_carrier(carrier: bytes | memoryview) -> dict[str, str]:
    """The headers of a carrier by name. Raises ValueError for a truncated entry or an
    unknown code."""
    headers: dict[str, str] = {}
    pos, end = 0, len(carrier)
    while pos < end:
        if end - pos < _ENTRY.size:
            raise ValueError("truncated trace context entry")
        code, length = _ENTRY.unpack_from(carrier, pos)
        pos += _ENTRY.size
        if not 1 <= code <= len(FIELDS):
            raise ValueError(f"unknown trace context header code {code}")
        if end - pos < length:
            raise ValueError("truncated trace context value")
        name = FIELDS[code - 1].decode()
        headers.setdefault(name, bytes(carrier[pos : pos + length]).decode("latin-1"))
        pos += length
    return headers


def split(payload: bytes | bytearray) -> tuple[TraceContext, bytes]:
    """A traced frame's payload -> (its context, the Object/Event bytes). The bytes after
    the prefix are copied once (only traced calls pay it). Raises ValueError when the
    prefix does not fit the payload."""
    if len(payload) < PREFIX_SIZE:
        raise ValueError("traced frame shorter than its prefix")
    size, arrived, sent = _PREFIX.unpack_from(payload)
    end = 2 + size
    if size < PREFIX_SIZE - 2 or end > len(payload):
        raise ValueError(f"trace context prefix of {size} bytes does not fit the frame")
    with memoryview(payload) as view:
        headers = decode_carrier(view[PREFIX_SIZE:end])
        body = bytes(view[end:])
    return TraceContext(headers, arrived, sent), body
