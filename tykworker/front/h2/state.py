"""Per-stream and per-connection bookkeeping for the native front's HTTP/2 core. No I/O.

* ``Limits``: what one connection accepts (advertised in SETTINGS where HTTP/2 has a
  setting for it).
* ``Stream``: one unary call's request body as it arrives and its answer while flow
  control holds it back.
* ``Budget``: a token bucket against floods of frames that cost the server work without
  making progress (PING, SETTINGS, PRIORITY, empty DATA, resets). Tokens refill with time
  and with every answered call, so a busy, well-behaved client never runs out.
* ``CallEvent``: what the connection hands to its driver: one complete request message.
* ``BufferPool``: the bytes held over all connections of a front (the total bound).

Invariants:
* ``Stream.body`` never holds more than ``5 + max_message`` bytes: the connection checks
  the gRPC length prefix before buffering past it.
* A ``Budget`` never holds more than its capacity.
* ``Stream.held`` is exactly the bytes of ``body``/``message``, then of ``out``, that the
  connection counts in its ``buffered`` and its pool's ``used``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tykworker.front.h2.frames import MAX_WINDOW
from tykworker.front.h2.heads import RequestHead
from tykworker.wire.frames import FrameKind


@dataclass(frozen=True, slots=True)
class Limits:
    max_message: int = 64 * 1024 * 1024
    max_streams: int = 1000
    max_header_list: int = 64 * 1024  # larger lists: RESOURCE_EXHAUSTED for that stream
    hard_header_list: int = 1024 * 1024  # encoded block or decoded list: connection error
    #: request body bytes discarded while waiting to answer an HTTP-level refusal
    discard_limit: int = 64 * 1024
    #: PING/SETTINGS/PRIORITY/empty-DATA frames: burst and refill per second
    control_burst: int = 1000
    control_rate: float = 200.0
    #: streams reset (by the peer, or by us for its errors): burst and refill per second
    reset_burst: int = 200
    reset_rate: float = 50.0
    #: CONTINUATION frames allowed in one header block
    max_continuations: int = 128
    #: bytes held for one connection: incomplete request messages + answers held by flow
    #: control (the ``connection_buffer_mb`` setting); at least one whole message
    connection_buffer: int = 128 * 1024 * 1024
    #: hand each call's propagation headers to the driver (``CallEvent.trace``; tracing on)
    trace_context: bool = False

    @property
    def stream_window(self) -> int:
        """INITIAL_WINDOW_SIZE: a whole message (and some slack) without WINDOW_UPDATE."""
        return min(MAX_WINDOW, self.max_message + 5 + self.discard_limit)

    @property
    def max_header_block(self) -> int:
        """Largest encoded header block buffered before decoding."""
        return self.hard_header_list


@dataclass(slots=True, eq=False)
class BufferPool:
    """Bytes held by every connection that shares this pool (the front's total bound,
    ``total_buffer_mb``). Connections add and remove their own bytes; ``used`` is their
    sum. A plain counter: O(1), no lock (one event loop)."""

    limit: int
    used: int = 0


@dataclass(slots=True, init=False)
class CallEvent:
    """A complete request: the driver routes it and calls ``respond`` once (a health
    Watch answers with ``start_stream``/``send_message``/``finish`` instead). Made per
    call, like ``Stream``: ``__init__`` written out (tykworker/compiled.py)."""

    stream_id: int
    kind: FrameKind | None
    payload: bytes | bytearray
    timeout: float | None
    health: str  # "Check" or "Watch" (grpc.health.v1.Health) when ``kind`` is None
    trace: bytes | None  # the propagation headers (``Limits.trace_context``), if any

    def __init__(
        self,
        stream_id: int,
        kind: FrameKind | None,
        payload: bytes | bytearray,
        timeout: float | None,
        health: str = "",
        trace: bytes | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.kind = kind
        self.payload = payload
        self.timeout = timeout
        self.health = health
        self.trace = trace


# How a stream closed; remembered for a while to judge frames that arrive late.
ENDED = 1  # both sides sent END_STREAM: later frames are a STREAM_CLOSED connection error
RESET_BY_US = 2  # we sent RST_STREAM: later frames are ignored (they were in flight)
RESET_BY_PEER = 3  # the peer sent RST_STREAM: later frames are a STREAM_CLOSED stream error


@dataclass(slots=True, eq=False, init=False)
class Stream:
    """One open stream (``__init__`` written out: tykworker/compiled.py)."""

    stream_id: int
    head: RequestHead
    recv_window: int
    send_window: int
    remote_closed: bool
    dispatched: bool  # a CallEvent went out; the driver owes one respond()
    answering: bool  # our answer has started (HEADERS sent)
    received: int  # DATA payload bytes (for content-length)
    body: bytearray | None  # the gRPC prefix while it is split over DATA frames
    # The request message (without prefix): ``bytes`` when it came whole in one DATA frame,
    # else a buffer of its announced length that DATA frames fill up to ``filled``.
    message: bytes | bytearray | None
    filled: int
    out: list[memoryview]  # answer DATA held by flow control
    trailers: bytes | None  # header block sent after ``out`` with END_STREAM
    data_end: bool  # END_STREAM on the last DATA frame (HTTP refusals: no trailers)
    held: int  # bytes of body/message or of ``out`` counted in the connection's buffer
    waiting_since: float  # first sweep that saw it waiting on the client (-1: not)

    def __init__(
        self, stream_id: int, head: RequestHead, recv_window: int, send_window: int
    ) -> None:
        self.stream_id = stream_id
        self.head = head
        self.recv_window = recv_window
        self.send_window = send_window
        self.remote_closed = False
        self.dispatched = False
        self.answering = False
        self.received = 0
        self.body = None
        self.message = None
        self.filled = 0
        self.out = []
        self.trailers = None
        self.data_end = False
        self.held = 0
        self.waiting_since = -1.0


@dataclass(slots=True)
class Budget:
    capacity: int
    rate: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.capacity)
        self.stamp = self.clock()

    def spend(self) -> bool:
        """Take one token; False when the bucket is empty (a flood)."""
        if self.tokens < 1.0:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens < 1.0:
                return False
        self.tokens -= 1.0
        return True

    def refund(self, tokens: float = 1.0) -> None:
        self.tokens = min(self.capacity, self.tokens + tokens)
