"""Protocol violations against the native front's HTTP/2 core: each gets the connection
error (GOAWAY code) or stream error (RST_STREAM code) RFC 9113 asks for, and floods of
cheap frames end in GOAWAY(ENHANCE_YOUR_CALM). h2spec covers the same ground end to end
(tests/interop/test_h2spec.py); these run everywhere, in milliseconds."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from tykworker.front.h2 import frames as f
from tykworker.front.h2.frames import ErrorCode, FrameType, Setting
from tykworker.front.h2.state import Limits

from .test_h2conn import Client, Frame

E = ErrorCode
T = FrameType


def goaway_code(frames: list[Frame]) -> int:
    goaways = [fr for fr in frames if fr.kind == FrameType.GOAWAY]
    assert goaways, f"no GOAWAY in {frames}"
    return goaways[-1].error_code


def raw(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return f.frame(kind, flags, sid, payload)


def open_stream(c: Client, sid: int = 1) -> bytes:
    return c.headers(sid)


def closed_stream(c: Client) -> bytes:
    c.feed(c.call(1, b"x"))
    c.conn.respond(1, b"y")
    c.read()
    return b""


CONNECTION_ERRORS: dict[str, tuple[Callable[[Client], bytes], ErrorCode]] = {
    "data-on-stream-0": (lambda c: raw(T.DATA, 0, 0, b"x"), E.PROTOCOL_ERROR),
    "data-on-idle-stream": (lambda c: raw(T.DATA, 0, 5, b"x"), E.PROTOCOL_ERROR),
    "data-bad-padding": (
        lambda c: open_stream(c) + raw(T.DATA, f.PADDED, 1, b"\x05ab"),
        E.PROTOCOL_ERROR,
    ),
    "headers-on-stream-0": (lambda c: raw(T.HEADERS, f.END_HEADERS, 0, b"\x83"), E.PROTOCOL_ERROR),
    "headers-even-stream": (lambda c: c.headers(2), E.PROTOCOL_ERROR),
    "headers-decreasing-id": (lambda c: c.headers(5) + c.headers(3), E.PROTOCOL_ERROR),
    "headers-bad-padding": (
        lambda c: raw(T.HEADERS, f.END_HEADERS | f.PADDED, 1, b"\x09\x83"),
        E.PROTOCOL_ERROR,
    ),
    "hpack-garbage": (
        lambda c: raw(T.HEADERS, f.END_HEADERS, 1, b"\xff\xff\xff\xff\xff"),
        E.COMPRESSION_ERROR,
    ),
    "hpack-bad-index": (
        lambda c: raw(T.HEADERS, f.END_HEADERS, 1, b"\xff\x00"),
        E.COMPRESSION_ERROR,
    ),
    "continuation-without-headers": (
        lambda c: raw(T.CONTINUATION, f.END_HEADERS, 1, b""),
        E.PROTOCOL_ERROR,
    ),
    "headers-interrupted": (
        lambda c: raw(T.HEADERS, 0, 1, b"\x83") + raw(T.PING, 0, 0, b"8" * 8),
        E.PROTOCOL_ERROR,
    ),
    "continuation-other-stream": (
        lambda c: raw(T.HEADERS, 0, 1, b"\x83") + raw(T.CONTINUATION, 4, 3, b""),
        E.PROTOCOL_ERROR,
    ),
    "frame-too-large": (lambda c: raw(T.DATA, 0, 1, b"x" * 16385), E.FRAME_SIZE_ERROR),
    "settings-on-stream": (lambda c: raw(T.SETTINGS, 0, 1), E.PROTOCOL_ERROR),
    "settings-bad-length": (lambda c: raw(T.SETTINGS, 0, 0, b"\0" * 5), E.FRAME_SIZE_ERROR),
    "settings-ack-payload": (lambda c: raw(T.SETTINGS, f.ACK, 0, b"\0" * 6), E.FRAME_SIZE_ERROR),
    "settings-push-2": (lambda c: f.settings({Setting.ENABLE_PUSH: 2}), E.PROTOCOL_ERROR),
    "settings-window-too-big": (
        lambda c: f.settings({Setting.INITIAL_WINDOW_SIZE: 1 << 31}),
        E.FLOW_CONTROL_ERROR,
    ),
    "settings-frame-size-small": (
        lambda c: f.settings({Setting.MAX_FRAME_SIZE: 100}),
        E.PROTOCOL_ERROR,
    ),
    "settings-frame-size-big": (
        lambda c: f.settings({Setting.MAX_FRAME_SIZE: 1 << 24}),
        E.PROTOCOL_ERROR,
    ),
    "ping-on-stream": (lambda c: raw(T.PING, 0, 1, b"8" * 8), E.PROTOCOL_ERROR),
    "ping-bad-length": (lambda c: raw(T.PING, 0, 0, b"7" * 7), E.FRAME_SIZE_ERROR),
    "goaway-on-stream": (lambda c: raw(T.GOAWAY, 0, 1, b"\0" * 8), E.PROTOCOL_ERROR),
    "rst-on-stream-0": (lambda c: f.rst_stream(0, 8), E.PROTOCOL_ERROR),
    "rst-on-idle-stream": (lambda c: f.rst_stream(9, 8), E.PROTOCOL_ERROR),
    "rst-bad-length": (
        lambda c: open_stream(c) + raw(T.RST_STREAM, 0, 1, b"\0" * 3),
        E.FRAME_SIZE_ERROR,
    ),
    "priority-on-stream-0": (lambda c: raw(T.PRIORITY, 0, 0, b"\0" * 5), E.PROTOCOL_ERROR),
    "push-promise": (
        lambda c: raw(T.PUSH_PROMISE, f.END_HEADERS, 1, b"\0\0\0\2"),
        E.PROTOCOL_ERROR,
    ),
    "window-update-0": (lambda c: f.window_update(0, 0), E.PROTOCOL_ERROR),
    "window-update-bad-length": (
        lambda c: raw(T.WINDOW_UPDATE, 0, 0, b"\0" * 3),
        E.FRAME_SIZE_ERROR,
    ),
    "window-update-idle-stream": (lambda c: f.window_update(7, 1), E.PROTOCOL_ERROR),
    "connection-window-overflow": (
        lambda c: f.window_update(0, f.MAX_WINDOW),
        E.FLOW_CONTROL_ERROR,
    ),
    "stream-window-overflow-by-settings": (
        lambda c: (
            open_stream(c)
            + f.settings({Setting.INITIAL_WINDOW_SIZE: f.MAX_WINDOW - 1})
            + f.window_update(1, 1)
            + f.settings({Setting.INITIAL_WINDOW_SIZE: f.MAX_WINDOW})
        ),
        E.FLOW_CONTROL_ERROR,
    ),
    "data-after-end-stream": (
        lambda c: closed_stream(c) + raw(T.DATA, 0, 1, b"x"),
        E.STREAM_CLOSED,
    ),
    "headers-after-end-stream": (lambda c: closed_stream(c) + c.headers(1), E.STREAM_CLOSED),
}


@pytest.mark.parametrize("chunks", ["all", "byte"])
@pytest.mark.parametrize("name", sorted(CONNECTION_ERRORS))
def test_connection_errors_send_goaway_with_the_right_code(name, chunks):
    build, code = CONNECTION_ERRORS[name]
    client = Client(chunks=chunks)
    client.start()
    client.feed(build(client))
    assert goaway_code(client.read()) == code
    assert client.conn.closed and client.conn.finished
    client.feed(client.call(101, b"after"))  # input after the error is dropped
    assert client.read() == []
    assert all(event.stream_id != 101 for event in client.events)


def test_bad_preface_gets_goaway_without_waiting_for_24_bytes():
    client = Client()
    client.feed(b"GET / HTTP/1.1\r\n")
    assert goaway_code(client.read()[2:]) == ErrorCode.PROTOCOL_ERROR


def test_preface_must_be_followed_by_settings():
    client = Client()
    client.feed(f.PREFACE + f.frame(T.PING, 0, 0, b"8" * 8))
    assert goaway_code(client.read()) == ErrorCode.PROTOCOL_ERROR


STREAM_ERRORS: dict[str, tuple[Callable[[Client], bytes], ErrorCode]] = {
    "window-update-0-on-stream": (
        lambda c: open_stream(c) + f.window_update(1, 0),
        E.PROTOCOL_ERROR,
    ),
    "stream-window-overflow": (
        lambda c: open_stream(c) + f.window_update(1, f.MAX_WINDOW),
        E.FLOW_CONTROL_ERROR,
    ),
    "priority-self-dependency": (
        lambda c: raw(T.PRIORITY, 0, 1, b"\0\0\0\1\x10"),
        E.PROTOCOL_ERROR,
    ),
    "priority-bad-length": (lambda c: raw(T.PRIORITY, 0, 1, b"\0\0\0\3"), E.FRAME_SIZE_ERROR),
    "headers-self-dependency": (
        lambda c: raw(T.HEADERS, f.END_HEADERS | f.PRIORITY_FLAG, 1, b"\0\0\0\1\x10\x83"),
        E.PROTOCOL_ERROR,
    ),
    "second-headers-without-end-stream": (lambda c: c.headers(1) + c.headers(1), E.PROTOCOL_ERROR),
    "pseudo-header-in-trailers": (
        lambda c: c.headers(1) + raw(T.HEADERS, f.END_HEADERS | f.END_STREAM, 1, b"\x83"),
        E.PROTOCOL_ERROR,
    ),
    "content-length-mismatch": (
        lambda c: c.headers(1, extra=((b"content-length", b"3"),)) + c.data(1, c.message(b"a")),
        E.PROTOCOL_ERROR,
    ),
    "data-after-client-reset": (
        lambda c: open_stream(c) + f.rst_stream(1, 8) + raw(T.DATA, 0, 1, b"x"),
        E.STREAM_CLOSED,
    ),
    "data-on-half-closed-stream": (
        lambda c: c.call(1, b"x") + raw(T.DATA, 0, 1, b"more"),
        E.STREAM_CLOSED,
    ),
}


@pytest.mark.parametrize("name", sorted(STREAM_ERRORS))
def test_stream_errors_reset_the_stream_and_keep_the_connection(name):
    build, code = STREAM_ERRORS[name]
    client = Client()
    client.start()
    client.feed(build(client))
    resets = [fr for fr in client.read() if fr.kind == FrameType.RST_STREAM]
    assert resets and resets[-1].error_code == code and resets[-1].stream_id == 1
    assert not client.conn.closed
    (event,) = client.feed(client.call(11, b"still fine"))
    assert event.stream_id == 11


def test_data_beyond_the_stream_window_is_a_flow_control_stream_error():
    limits = Limits(max_message=10, discard_limit=20)
    client = Client(limits)
    client.start()
    # One DATA frame one byte larger than the stream's whole window, on a well-formed call:
    # no refusal or discard limit can answer first, only the window check.
    overrun = client.data(1, b"x" * (limits.stream_window + 1), end=False)
    client.feed(client.headers(1) + overrun)
    resets = [fr for fr in client.read() if fr.kind == FrameType.RST_STREAM]
    assert [(fr.stream_id, fr.error_code) for fr in resets] == [(1, E.FLOW_CONTROL_ERROR)]
    assert not client.conn.closed


def test_late_frames_on_streams_we_reset_are_ignored():
    client = Client()
    client.start()
    client.feed(client.headers(1, extra=((b"Bad", b"x"),)))  # RST_STREAM(PROTOCOL_ERROR)
    client.read()
    client.feed(raw(T.DATA, 0, 1, b"in flight") + f.window_update(1, 5) + f.rst_stream(1, 0))
    assert client.read() == [] and not client.conn.closed


# --- floods -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flood",
    [
        lambda c, i: raw(T.PING, 0, 0, struct.pack(">Q", i)),
        lambda c, i: f.settings({}),
        lambda c, i: raw(T.PRIORITY, 0, 2 * i + 1, b"\0\0\0\0\x10"),
        lambda c, i: raw(77, 0, 0, b""),  # unknown frame type
        lambda c, i: (c.headers(1) if i == 0 else b"") + raw(T.DATA, 0, 1, b""),  # empty DATA
        lambda c, i: c.headers(2 * i + 1) + f.rst_stream(2 * i + 1, 8),  # rapid reset
        lambda c, i: c.headers(2 * i + 1, extra=((b"Bad", b"x"),)),  # made-you-reset
    ],
    ids=["ping", "settings", "priority", "unknown", "empty-data", "rapid-reset", "made-you-reset"],
)
def test_floods_end_with_enhance_your_calm(flood):
    limits = Limits(control_burst=50, control_rate=10, reset_burst=20, reset_rate=5)
    client = Client(limits)
    client.start()
    client.feed(b"".join(flood(client, i) for i in range(200)))
    assert goaway_code(client.read()) == ErrorCode.ENHANCE_YOUR_CALM


def test_budgets_refill_with_time_and_answers():
    limits = Limits(control_burst=10, control_rate=1)
    client = Client(limits)
    client.start()
    for second in range(30):  # 2 pings a second for 30 s: more than 10 + 1/s without answers
        client.clock.now = float(second)
        sid = 2 * second + 1
        assert len(client.feed(client.call(sid, b"x"))) == 1
        client.conn.respond(sid, b"y")
        client.conn.respond(sid, b"twice")  # a second answer is dropped
        client.feed(raw(T.PING, 0, 0, b"p" * 8))
        client.clock.now += 0.5
        client.feed(raw(T.PING, 0, 0, b"q" * 8))
    assert not client.conn.closed
    frames = client.read()
    assert sum(fr.kind == FrameType.PING for fr in frames) == 60
    assert sum(fr.kind == FrameType.DATA for fr in frames) == 30


def test_continuation_floods_and_huge_header_blocks_are_refused():
    client = Client(Limits(max_continuations=4))
    client.start()
    wire = raw(T.HEADERS, 0, 1, b"\x83") + b"".join(
        raw(T.CONTINUATION, 0, 1, b"") for _ in range(9)
    )
    client.feed(wire)
    assert goaway_code(client.read()) == ErrorCode.ENHANCE_YOUR_CALM
    client = Client(Limits(max_header_list=1000, hard_header_list=2000))
    client.start()
    fragment = b"x" * 900  # never decoded: the size check comes first
    wire = raw(T.HEADERS, 0, 1, fragment) + raw(T.CONTINUATION, 0, 1, fragment) * 2
    client.feed(wire)
    assert goaway_code(client.read()) == ErrorCode.ENHANCE_YOUR_CALM


def test_refused_stream_beyond_max_concurrent_streams():
    client = Client(Limits(max_streams=3))
    client.start()
    client.feed(b"".join(client.headers(sid) for sid in (1, 3, 5, 7)))
    (frame,) = client.read()
    assert frame.kind == FrameType.RST_STREAM and frame.stream_id == 7
    assert frame.error_code == ErrorCode.REFUSED_STREAM
