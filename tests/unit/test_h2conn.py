"""The native front's sans-IO HTTP/2 connection (tykworker/h2conn.py), driven by a tiny
test client: calls, answers, flow control, limits, and input fed byte by byte or in random
chunks (the result must not depend on how the bytes are cut)."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

import hpack
import pytest

from tykworker.front.h2 import frames as f
from tykworker.front.h2.conn import CONN_WINDOW, H2Connection
from tykworker.front.h2.frames import ErrorCode, FrameType, Setting
from tykworker.front.h2.heads import literal
from tykworker.front.h2.state import CallEvent, Limits
from tykworker.wire.frames import FrameKind

DISPATCH = b"/coprocess.Dispatcher/Dispatch"


@dataclass
class Frame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes
    headers: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def error_code(self) -> int:
        offset = 4 if self.kind == FrameType.GOAWAY else 0
        return int(struct.unpack_from(">L", self.payload, offset)[0])


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Client:
    """Builds client frames and reads the server's answers."""

    def __init__(self, limits: Limits | None = None, chunks: str = "all", seed: int = 0):
        self.clock = Clock()
        self.conn = H2Connection(limits or Limits(max_message=1 << 20), self.clock)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.chunks = chunks
        self.rng = random.Random(seed)
        self.events: list[CallEvent] = []
        self._buf = b""

    # --- building ---------------------------------------------------------------------
    @staticmethod
    def preface(**settings: int) -> bytes:
        values = {Setting[name.upper()]: value for name, value in settings.items()}
        return f.PREFACE + f.settings(values)

    def headers(
        self,
        stream_id: int,
        path: bytes = DISPATCH,
        end: bool = False,
        extra: tuple[tuple[bytes, bytes], ...] = (),
        content_type: bytes = b"application/grpc",
        method: bytes = b"POST",
    ) -> bytes:
        fields = [(b":method", method), (b":scheme", b"http"), (b":path", path)]
        fields += [(b":authority", b"localhost"), (b"content-type", content_type)]
        fields += [(b"te", b"trailers"), *extra]
        block = self.encoder.encode(fields)
        flags = f.END_HEADERS | (f.END_STREAM if end else 0)
        return f.frame(FrameType.HEADERS, flags, stream_id, block)

    @staticmethod
    def data(stream_id: int, payload: bytes, end: bool = True) -> bytes:
        return f.frame(FrameType.DATA, f.END_STREAM if end else 0, stream_id, payload)

    @staticmethod
    def message(payload: bytes, flag: int = 0) -> bytes:
        return struct.pack(">BL", flag, len(payload)) + payload

    def call(self, stream_id: int, payload: bytes, **kw: object) -> bytes:
        return self.headers(stream_id, **kw) + self.data(stream_id, self.message(payload))  # type: ignore[arg-type]

    # --- feeding and reading ----------------------------------------------------------
    def feed(self, data: bytes) -> list[CallEvent]:
        events: list[CallEvent] = []
        pos = 0
        while pos < len(data):
            if self.chunks == "byte":
                n = 1
            elif self.chunks == "random":
                n = self.rng.randint(1, 64)
            else:
                n = len(data)
            events += self.conn.receive(data[pos : pos + n])
            pos += n
        self.events += events
        return events

    def read(self) -> list[Frame]:
        """The frames the connection has to send, parsed."""
        return self.frames_in(self.conn.data_to_send())

    def frames_in(self, data: bytes) -> list[Frame]:
        """The whole frames of ``data`` (after any partial one left by the last call)."""
        self._buf += data
        frames = []
        while len(self._buf) >= 9:
            hi, lo, kind, flags, sid = f.FRAME_HEADER.unpack_from(self._buf)
            length = hi << 16 | lo
            if len(self._buf) < 9 + length:
                break
            payload, self._buf = self._buf[9 : 9 + length], self._buf[9 + length :]
            frame = Frame(kind, flags, sid & f.STREAM_MASK, payload)
            if kind == FrameType.HEADERS:
                frame.headers = dict(self.decoder.decode(payload, raw=True))
            frames.append(frame)
        return frames

    def start(self, **settings: int) -> list[Frame]:
        self.feed(self.preface(**settings))
        return self.read()


def kinds(frames: list[Frame]) -> list[str]:
    return [FrameType(fr.kind).name if fr.kind < 10 else str(fr.kind) for fr in frames]


def grpc_status(frames: list[Frame], stream_id: int) -> int:
    for fr in frames:
        if (
            fr.kind == FrameType.HEADERS
            and fr.stream_id == stream_id
            and b"grpc-status" in fr.headers
        ):
            return int(fr.headers[b"grpc-status"])
    raise AssertionError(f"no grpc-status on stream {stream_id}: {frames}")


def body(frames: list[Frame], stream_id: int) -> bytes:
    return b"".join(fr.payload for fr in frames if fr.kind == 0 and fr.stream_id == stream_id)


# --- the happy path ---------------------------------------------------------------------------


def test_server_preface_settings_and_connection_window():
    client = Client(Limits(max_message=1 << 20, max_streams=50))
    first = client.read()
    assert kinds(first) == ["SETTINGS", "WINDOW_UPDATE"]
    values = dict(struct.iter_unpack(">HL", first[0].payload))
    assert values[Setting.MAX_CONCURRENT_STREAMS] == 50
    assert values[Setting.INITIAL_WINDOW_SIZE] >= (1 << 20) + 5
    assert first[1].error_code + f.DEFAULT_WINDOW == CONN_WINDOW
    assert kinds(client.start()) == ["SETTINGS"] and client.read() == []


@pytest.mark.parametrize("chunks", ["all", "byte", "random"])
def test_unary_calls_whatever_the_chunking(chunks):
    client = Client(chunks=chunks, seed=7)
    client.start()
    payloads = {sid: bytes([sid]) * (sid * 300) for sid in (1, 3, 5, 7)}
    wire = b"".join(client.call(sid, payload) for sid, payload in payloads.items())
    events = client.feed(wire)
    assert [(e.stream_id, e.kind, e.payload, e.timeout) for e in events] == [
        (sid, FrameKind.DISPATCH, payload, None) for sid, payload in payloads.items()
    ]
    for event in events:
        client.conn.respond(event.stream_id, event.payload[::-1])
    frames = client.read()
    for sid, payload in payloads.items():
        mine = [fr for fr in frames if fr.stream_id == sid]
        assert kinds(mine) == ["HEADERS", "DATA", "HEADERS"]
        assert mine[0].headers == {b":status": b"200", b"content-type": b"application/grpc"}
        assert mine[1].payload == client.message(payload[::-1])
        assert mine[2].flags & f.END_STREAM and mine[2].headers == {b"grpc-status": b"0"}
    assert client.conn.idle


def test_event_method_grpc_timeout_and_message_split_over_frames():
    client = Client(chunks="random", seed=3)
    client.start()
    message = client.message(b"e" * 40000)
    wire = client.headers(
        1, path=b"/coprocess.Dispatcher/DispatchEvent", extra=((b"grpc-timeout", b"250m"),)
    )
    for pos in range(0, len(message), 16384):
        wire += client.data(1, message[pos : pos + 16384], end=pos + 16384 >= len(message))
    (event,) = client.feed(wire)
    assert event.kind == FrameKind.EVENT and event.payload == b"e" * 40000
    assert event.timeout == pytest.approx(0.25)


def test_empty_end_stream_data_frame_after_the_message():
    client = Client()
    client.start()
    wire = client.headers(1) + client.data(1, client.message(b"x"), end=False)
    assert client.feed(wire) == []
    (event,) = client.feed(client.data(1, b"", end=True))
    assert event.payload == b"x"


def test_large_answer_waits_for_windows_and_respects_max_frame_size():
    client = Client(Limits(max_message=4 << 20))
    client.start()
    assert len(client.feed(client.call(1, b"q"))) == 1
    answer = bytes(range(256)) * 1024  # 256 KiB: more than the default 64 KiB windows
    client.conn.respond(1, answer)
    frames = client.read()
    assert kinds(frames) == ["HEADERS", "DATA", "DATA", "DATA", "DATA"]
    assert all(len(fr.payload) <= 16384 for fr in frames)
    assert sum(len(fr.payload) for fr in frames[1:]) == f.DEFAULT_WINDOW
    # More connection window alone is not enough: the stream window is spent too.
    client.feed(f.window_update(0, 1 << 20))
    assert client.read() == []
    # A bigger peer frame size and stream window: the rest goes, trailers last.
    client.feed(f.settings({Setting.MAX_FRAME_SIZE: 1 << 20}) + f.window_update(1, 1 << 20))
    rest = client.read()
    assert kinds(rest)[0] == "SETTINGS" and kinds(rest)[-1] == "HEADERS"
    assert rest[-1].flags & f.END_STREAM and rest[-1].headers[b"grpc-status"] == b"0"
    got = body(frames, 1) + body(rest, 1)
    assert got == client.message(answer)
    assert max(len(fr.payload) for fr in rest if fr.kind == 0) > 16384


def test_initial_window_change_applies_to_open_streams():
    client = Client()
    client.start(initial_window_size=10)
    client.feed(client.call(1, b"q"))
    client.conn.respond(1, b"z" * 100)
    frames = client.read()
    assert kinds(frames) == ["HEADERS", "DATA"] and len(frames[1].payload) == 10
    client.feed(f.settings({Setting.INITIAL_WINDOW_SIZE: 1000}))
    frames = client.read()
    assert kinds(frames) == ["SETTINGS", "DATA", "HEADERS"]
    assert len(frames[1].payload) == 95


def test_ping_ack_goes_out_with_the_answers_of_the_same_read():
    client = Client()
    client.start()
    assert len(client.feed(client.call(1, b"a"))) == 1
    client.conn.respond(1, b"b")
    client.feed(f.frame(FrameType.PING, 0, 0, b"12345678"))
    out = client.conn.data_to_send()
    assert (out.count(b"12345678") == 1 and b"grpc-status" in out) or b"\x00" in out
    frames = client.frames_in(out)
    assert kinds(frames) == ["HEADERS", "DATA", "HEADERS", "PING"]
    assert frames[-1].flags & f.ACK
    client.feed(f.frame(FrameType.PING, f.ACK, 0, b"12345678"))
    assert client.read() == []  # an ACK is not answered


# --- unary edge cases -------------------------------------------------------------------------


def test_unknown_method_is_unimplemented_trailers_only():
    client = Client()
    client.start()
    assert client.feed(client.call(1, b"x", path=b"/coprocess.Dispatcher/Nope")) == []
    frames = client.read()
    assert grpc_status(frames, 1) == 12
    assert frames[0].flags & f.END_STREAM and frames[0].headers[b":status"] == b"200"
    assert b"Nope" in frames[0].headers[b"grpc-message"]


def test_wrong_content_type_is_invalid_argument_after_the_body():
    client = Client()
    client.start()
    assert client.feed(client.headers(1, content_type=b"application/json")) == []
    assert client.read() == []  # waits for the end of the request
    client.feed(client.data(1, b"{}"))
    frames = client.read()
    assert frames[0].headers[b":status"] == b"415" and grpc_status(frames, 1) == 3
    assert b"content-type" in body(frames, 1)
    assert frames[-1].flags & f.END_STREAM


def test_get_is_refused_with_405():
    client = Client()
    client.start()
    client.feed(client.headers(1, method=b"GET", end=True))
    frames = client.read()
    assert frames[0].headers[b":status"] == b"405" and grpc_status(frames, 1) == 13


@pytest.mark.parametrize(
    ("wire", "status", "reset"),
    [
        (lambda c: c.headers(1, end=True), 13, False),  # no message
        (lambda c: c.headers(1) + c.data(1, c.message(b"a") + c.message(b"b")), 13, False),
        (lambda c: c.headers(1) + c.data(1, c.message(b"a"), False) + c.data(1, b"\0"), 13, False),
        (lambda c: c.headers(1) + c.data(1, c.message(b"a", flag=1), False), 12, True),
        (lambda c: c.headers(1) + c.data(1, c.message(b"a")[:3]), 13, False),  # truncated
        (lambda c: c.headers(1) + c.data(1, b"\0" + struct.pack(">L", 2 << 20), False), 8, True),
    ],
    ids=["no-message", "two-messages", "two-frames", "compressed", "truncated", "too-large"],
)
def test_bad_request_bodies_get_a_status_and_no_call(wire, status, reset):
    client = Client()
    client.start()
    assert client.feed(wire(client)) == []
    frames = client.read()
    assert grpc_status(frames, 1) == status
    resets = [fr for fr in frames if fr.kind == FrameType.RST_STREAM]
    assert bool(resets) == reset
    if reset:  # RESOURCE_EXHAUSTED/UNIMPLEMENTED then RST_STREAM(NO_ERROR); late DATA ignored
        assert resets[0].error_code == ErrorCode.NO_ERROR
        client.feed(client.data(1, b"more"))
        assert client.read() == [] and not client.conn.closed


def test_answer_larger_than_the_limit_is_resource_exhausted():
    client = Client(Limits(max_message=100))
    client.start()
    client.feed(client.call(1, b"a"))
    client.conn.respond(1, b"x" * 101)
    assert grpc_status(client.read(), 1) == 8


def test_header_list_over_the_limit_is_resource_exhausted():
    client = Client(Limits(max_header_list=500))
    client.start()
    client.feed(client.call(1, b"a", extra=((b"x-big", b"v" * 300),)))
    assert grpc_status(client.read(), 1) == 8
    (event,) = client.feed(client.call(3, b"a"))  # the connection is fine
    assert event.stream_id == 3


def test_malformed_headers_reset_the_stream_with_protocol_error():
    client = Client()
    client.start()
    for sid, extra in (
        (1, (b"Upper", b"x")),
        (3, (b"connection", b"close")),
        (5, (b"te", b"gzip")),
    ):
        client.feed(client.headers(sid, extra=(extra,)))
        (frame,) = client.read()
        assert frame.kind == FrameType.RST_STREAM and frame.error_code == ErrorCode.PROTOCOL_ERROR


def test_client_reset_drops_the_answer_and_the_call_still_counts_until_answered():
    client = Client(Limits(max_streams=2))
    client.start()
    client.feed(client.call(1, b"a") + client.call(3, b"b"))
    client.feed(f.rst_stream(1, ErrorCode.CANCEL))
    client.feed(client.headers(5))  # stream 1's call still runs: over the limit
    (refused,) = client.read()
    assert refused.stream_id == 5 and refused.error_code == ErrorCode.REFUSED_STREAM
    client.conn.respond(1, b"late")
    assert client.read() == []
    (event,) = client.feed(client.call(7, b"c"))
    assert event.stream_id == 7


def test_drain_sends_goaway_serves_open_streams_and_ignores_new_ones():
    client = Client()
    client.start()
    client.feed(client.call(1, b"a"))
    client.conn.drain()
    (goaway,) = client.read()
    assert goaway.kind == FrameType.GOAWAY and goaway.error_code == ErrorCode.NO_ERROR
    assert struct.unpack_from(">L", goaway.payload)[0] == 1
    assert client.feed(client.call(3, b"b")) == [] and client.read() == []
    assert not client.conn.finished
    client.conn.respond(1, b"done")
    assert grpc_status(client.read(), 1) == 0
    assert client.conn.finished


# --- HPACK cache ----------------------------------------------------------------------------


def test_repeated_header_blocks_hit_the_cache_and_table_changes_clear_it():
    client = Client()
    client.start()
    decoder = client.conn._decoder
    client.feed(client.call(1, b"a"))  # first block: literals with indexing
    block = client.encoder.encode(
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", DISPATCH),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
    )
    assert len(block) < 12  # fully indexed now
    client.feed(
        f.frame(FrameType.HEADERS, f.END_HEADERS, 3, block) + client.data(3, client.message(b"b"))
    )
    assert block in decoder._cache
    client.feed(client.call(5, b"c", extra=((b"x-new", b"1"),)))  # inserts: the cache is cleared
    assert block not in decoder._cache


def test_cached_block_is_not_reused_once_the_table_changed():
    """The same bytes (dynamic index 62) mean another path after an insertion."""
    client = Client()
    client.start()

    def literal_indexed(name: bytes, value: bytes) -> bytes:
        return b"\x40" + bytes([len(name)]) + name + bytes([len(value)]) + value

    pre, ctype = b"\x83\x86", literal(31, b"application/grpc")  # POST, http; not indexed

    def call(sid: int, path_field: bytes) -> list[CallEvent]:
        block = pre + path_field + ctype
        frame = f.frame(FrameType.HEADERS, f.END_HEADERS, sid, block)
        return client.feed(frame + client.data(sid, client.message(b"m")))

    call(1, literal_indexed(b":path", DISPATCH))
    (e3,) = call(3, b"\xbe")  # indexed: dynamic entry 62, the newest
    assert e3.kind == FrameKind.DISPATCH and pre + b"\xbe" + ctype in client.conn._decoder._cache
    call(5, literal_indexed(b":path", b"/coprocess.Dispatcher/DispatchEvent"))
    (e7,) = call(7, b"\xbe")
    assert e7.kind == FrameKind.EVENT


def test_refused_streams_still_decode_their_header_blocks():
    client = Client(Limits(max_streams=1))
    client.start()
    client.feed(client.call(1, b"a"))
    client.feed(client.call(3, b"b", extra=((b"x-once", b"v"),)))  # refused, but indexed
    client.read()
    client.conn.respond(1, b"ok")
    (event,) = client.feed(client.call(5, b"c", extra=((b"x-once", b"v"),)))
    assert event.stream_id == 5 and not client.conn.closed
