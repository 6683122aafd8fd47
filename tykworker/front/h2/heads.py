"""gRPC-over-HTTP/2 request heads and response header blocks for the native front. No I/O.

* ``HeaderDecoder``: HPACK decoding (the ``hpack`` package) with a cache of decoded request
  heads keyed by the header block's bytes. grpc-go sends the same fully indexed 7-8 byte
  block for every call after the first, so a hit skips HPACK decoding and validation.
* ``parse_request``: a decoded header list -> ``RequestHead`` (which call, its
  ``grpc-timeout``, or why it is refused).
* Response blocks are encoded here by hand with HPACK literals *without indexing* and
  static-table indexes only: the server never touches its encoder's dynamic table, so a
  pre-encoded block is valid on every connection forever.

Invariants:
* A cached head is only ever returned while the decoder's dynamic table is exactly as it
  was when the head was cached: a block whose decoding changed the table is never cached,
  and any change of the table (insertion, eviction, size update) clears the cache.
* Every header block is decoded, even for streams that are refused or ignored, so the
  HPACK state never diverges from the peer's encoder.
* The cache never holds more than ``CACHE_ENTRIES`` heads nor more than ``CACHE_BYTES``
  bytes of blocks and refusal texts: a block that does not fit is decoded every time.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import hpack

from tykworker.wire import tracecontext
from tykworker.wire.frames import FrameKind

SERVICE_PREFIX: Final = b"/coprocess.Dispatcher/"
METHODS: Final = {
    SERVICE_PREFIX + b"Dispatch": FrameKind.DISPATCH,
    SERVICE_PREFIX + b"DispatchEvent": FrameKind.EVENT,
}
HEALTH: Final = {b"/grpc.health.v1.Health/Check": "Check", b"/grpc.health.v1.Health/Watch": "Watch"}
#: Bound of the decoded-block cache of one connection: entries, and bytes of the blocks
#: (the keys) plus any refusal text (the values). grpc-go needs 1-3 entries of < 300 bytes.
CACHE_ENTRIES: Final = 64
CACHE_BYTES: Final = 64 * 1024
_TIMEOUT_UNITS: Final = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}
_REQUEST_PSEUDO: Final = frozenset({b":method", b":scheme", b":path", b":authority"})
_CONNECTION_HEADERS: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_TOKEN: Final = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


class Status(enum.IntEnum):
    """gRPC status codes used by the front."""

    OK = 0
    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request gets no call: answered with ``http_status`` and ``grpc_status``.
    ``deferred`` (HTTP-level refusals) waits for the end of the request body first."""

    http_status: int
    grpc_status: Status
    message: str
    deferred: bool = False


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What a request's header block says. ``malformed`` (RFC 9113 §8.1.1) is a stream
    error PROTOCOL_ERROR; otherwise ``refusal`` or a call of ``kind`` (None with ``health``:
    ``Check`` or ``Watch`` of ``grpc.health.v1.Health``)."""

    kind: FrameKind | None = None
    health: str = ""
    timeout: float | None = None
    content_length: int | None = None
    refusal: Refusal | None = None
    malformed: str | None = None
    trace: bytes | None = None  # propagation headers (wire.tracecontext carrier), if wanted


class HeaderDecoder:
    """HPACK decoder of one connection plus the decoded-block cache (see invariants)."""

    def __init__(self, max_header_list: int, hard_limit: int, trace: bool = False) -> None:
        self.max_header_list = max_header_list
        self.trace = trace  # collect propagation headers (tracing on)
        self._decoder = hpack.Decoder(max_header_list_size=hard_limit)
        self._cache: dict[bytes, RequestHead] = {}
        self.cache_bytes = 0
        self._table: Any = self._decoder.header_table
        self._state = self._table_state()

    def _table_state(self) -> tuple[int, int, object]:
        entries = self._table.dynamic_entries
        return self._table.maxsize, len(entries), entries[0] if entries else None

    def _table_changed(self) -> bool:
        size, count, first = self._table_state()
        old_size, old_count, old_first = self._state
        return size != old_size or count != old_count or first is not old_first

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """Decode one complete block (raises ``hpack.HPACKError``); clears the cache if
        the dynamic table changed."""
        headers: list[tuple[bytes, bytes]] = list(self._decoder.decode(block, raw=True))
        if self._table_changed():
            self._clear()
        return headers

    def _clear(self) -> None:
        self._cache.clear()
        self.cache_bytes = 0
        self._state = self._table_state()

    def request(self, block: bytes) -> RequestHead:
        """The request head of ``block``, from the cache when valid."""
        head = self._cache.get(block)
        if head is not None:
            return head
        headers: list[tuple[bytes, bytes]] = list(self._decoder.decode(block, raw=True))
        head = parse_request(headers, self.max_header_list, self.trace)
        if self._table_changed():
            self._clear()
        elif len(self._cache) < CACHE_ENTRIES:
            cost = len(block) + len(head.malformed or "")
            cost += len(head.refusal.message) if head.refusal else 0
            if self.cache_bytes + cost <= CACHE_BYTES:
                self._cache[block] = head
                self.cache_bytes += cost
        return head


def header_list_size(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """RFC 9113 §6.5.2: name + value + 32 per field."""
    return sum(len(name) + len(value) + 32 for name, value in headers)


def _malformed_field(name: bytes, value: bytes) -> str | None:
    if not name or not all(c in _TOKEN for c in name.lstrip(b":")):
        return f"invalid header name {name!r}"
    if b"\0" in value or b"\r" in value or b"\n" in value:
        return f"invalid value for header {name!r}"
    if name in _CONNECTION_HEADERS:
        return f"connection-specific header {name!r}"
    if name == b"te" and value != b"trailers":
        return "te other than trailers"
    return None


def _split(headers: list[tuple[bytes, bytes]]) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """Pseudo and regular fields; raises ValueError when malformed."""
    pseudo: dict[bytes, bytes] = {}
    regular: dict[bytes, bytes] = {}
    for name, value in headers:
        problem = _malformed_field(name, value)
        if problem:
            raise ValueError(problem)
        if name.startswith(b":"):
            if regular or name not in _REQUEST_PSEUDO or name in pseudo:
                raise ValueError(f"misplaced, unknown or repeated pseudo-header {name!r}")
            pseudo[name] = value
        elif name in regular and name in (b"content-type", b"grpc-timeout", b"content-length"):
            raise ValueError(f"repeated {name!r}")
        else:
            regular[name] = value
    for name in (b":method", b":scheme", b":path"):
        if not pseudo.get(name):
            raise ValueError(f"missing or empty {name.decode()}")
    return pseudo, regular


def parse_request(
    headers: list[tuple[bytes, bytes]], max_header_list: int, trace: bool = False
) -> RequestHead:
    """Validate a request header list as HTTP/2 and then as unary gRPC; with ``trace``,
    the head carries the call's propagation headers (``RequestHead.trace``)."""
    try:
        pseudo, regular = _split(headers)
        length = regular.get(b"content-length")
        if length is not None and not length.isdigit():
            raise ValueError("invalid content-length")
        content_length = int(length) if length is not None else None
    except ValueError as exc:
        return RequestHead(malformed=str(exc))
    size = header_list_size(headers)
    if size > max_header_list:
        message = f"header list of {size} bytes exceeds the limit of {max_header_list}"
        return _refused(content_length, 200, Status.RESOURCE_EXHAUSTED, message)
    content_type = regular.get(b"content-type", b"")
    if not _is_grpc(content_type):
        message = f"invalid gRPC request content-type {content_type.decode('latin-1')!r}"
        return _refused(content_length, 415, Status.INVALID_ARGUMENT, message, True)
    if pseudo[b":method"] != b"POST":
        message = f"method {pseudo[b':method'].decode('latin-1')} is not POST"
        return _refused(content_length, 405, Status.INTERNAL, message, True)
    kind = METHODS.get(pseudo[b":path"])
    health = HEALTH.get(pseudo[b":path"], "")
    if kind is None and not health:
        message = f"unknown method {pseudo[b':path'].decode('latin-1')}"
        return _refused(content_length, 200, Status.UNIMPLEMENTED, message)
    timeout = None
    if b"grpc-timeout" in regular:
        timeout = parse_timeout(regular[b"grpc-timeout"])
        if timeout is None:
            return _refused(content_length, 200, Status.INTERNAL, "malformed grpc-timeout")
    carrier = tracecontext.carrier_of(regular) if trace and kind is not None else None
    return RequestHead(kind, health, timeout, content_length, trace=carrier)


def _refused(
    length: int | None, http: int, status: Status, message: str, deferred: bool = False
) -> RequestHead:
    return RequestHead(content_length=length, refusal=Refusal(http, status, message, deferred))


def _is_grpc(content_type: bytes) -> bool:
    return content_type == b"application/grpc" or content_type.startswith(
        (b"application/grpc+", b"application/grpc;")
    )


def parse_timeout(value: bytes) -> float | None:
    """``grpc-timeout`` (1-8 digits and a unit) in seconds, or None when malformed."""
    digits, unit = value[:-1], value[-1:]
    if not 1 <= len(digits) <= 8 or not digits.isdigit() or not unit:
        return None
    scale = _TIMEOUT_UNITS.get(unit[0])
    return None if scale is None else int(digits) * scale


def trailers_valid(headers: list[tuple[bytes, bytes]]) -> bool:
    """Request trailers: well-formed regular fields, no pseudo-headers."""
    return all(
        not name.startswith(b":") and _malformed_field(name, value) is None
        for name, value in headers
    )


# --- response header blocks ------------------------------------------------------------------


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    return _integer(len(data), 7, 0) + data


def literal(name: bytes | int, value: bytes) -> bytes:
    """One field as a literal without indexing; ``name`` is a static-table index or bytes."""
    if isinstance(name, int):
        return _integer(name, 4, 0) + _string(value)
    return b"\x00" + _string(name) + _string(value)


_STATUS_200: Final = b"\x88"  # indexed field, static table 8 = ":status: 200"
_CONTENT_TYPE: Final = 31  # static table index of content-type
RESPONSE_HEADERS: Final = _STATUS_200 + literal(_CONTENT_TYPE, b"application/grpc")
OK_TRAILERS: Final = literal(b"grpc-status", b"0")


def _percent_encode(message: str) -> bytes:
    out = bytearray()
    for byte in message.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def status_fields(status: Status, message: str) -> bytes:
    fields = literal(b"grpc-status", b"%d" % status)
    if message:
        fields += literal(b"grpc-message", _percent_encode(message))
    return fields


def trailers_only(status: Status, message: str) -> bytes:
    """A complete gRPC answer in one header block (HTTP 200)."""
    return RESPONSE_HEADERS + status_fields(status, message)


def http_refusal(refusal: Refusal) -> bytes:
    """Header block for an HTTP-level refusal; the body is ``refusal.message`` as text."""
    if refusal.http_status == 200:
        return trailers_only(refusal.grpc_status, refusal.message)
    status = literal(8, b"%d" % refusal.http_status)
    content_type = literal(_CONTENT_TYPE, b"text/plain; charset=utf-8")
    return status + content_type + status_fields(refusal.grpc_status, refusal.message)
