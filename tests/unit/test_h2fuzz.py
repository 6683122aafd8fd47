"""Fuzzing the native front's frame parser (hypothesis): whatever arrives, no exception
escapes ``receive``; a connection that fails sends exactly one GOAWAY, last, carrying the
error code it recorded; valid traffic gives the same calls however it is cut into reads."""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tykworker.front.h2 import frames as f
from tykworker.front.h2.frames import ErrorCode, FrameType

from .test_h2conn import Client, Frame
from .test_h2violations import CONNECTION_ERRORS

# Violations whose meaning does not depend on which stream ids were used before (the rest
# are checked byte by byte in test_h2violations.py).
ID_DEPENDENT = {
    "data-on-idle-stream",
    "rst-on-idle-stream",
    "window-update-idle-stream",
    "data-after-end-stream",
    "headers-after-end-stream",
    "data-bad-padding",
    "rst-bad-length",
    "stream-window-overflow-by-settings",
}
ANYTIME = sorted(set(CONNECTION_ERRORS) - ID_DEPENDENT)
FUZZ = settings(
    max_examples=int(os.environ.get("H2FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

frames_st = st.lists(
    st.tuples(
        st.integers(0, 12),  # frame type, including unknown ones
        st.integers(0, 255),  # flags
        st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 - 1]),  # stream id
        st.binary(max_size=40),
    ),
    max_size=25,
)
cuts_st = st.lists(st.integers(1, 50), min_size=1, max_size=20)


def feed_cut(client: Client, data: bytes, cuts: list[int]) -> None:
    pos, i = 0, 0
    while pos < len(data):
        n = cuts[i % len(cuts)]
        client.conn.receive(data[pos : pos + n])
        pos, i = pos + n, i + 1


def check_goaway_invariant(client: Client) -> list[Frame]:
    frames = client.read()
    goaways = [fr for fr in frames if fr.kind == FrameType.GOAWAY]
    if client.conn.closed:
        assert client.conn.error is not None
        assert len(goaways) == 1 and frames[-1] is goaways[0]
        assert goaways[0].error_code == client.conn.error[0]
        client.conn.receive(b"\x00" * 30)  # later input is dropped
        assert client.conn.data_to_send() == b""
    else:
        assert goaways == []
    return frames


@FUZZ
@given(frames=frames_st, cuts=cuts_st)
def test_random_frames_never_raise_and_failures_end_in_one_goaway(frames, cuts):
    client = Client()
    wire = Client.preface() + b"".join(
        f.frame(kind, flags, sid, payload) for kind, flags, sid, payload in frames
    )
    feed_cut(client, wire, cuts)
    check_goaway_invariant(client)


@FUZZ
@given(data=st.binary(max_size=300), cuts=cuts_st, with_preface=st.booleans())
def test_random_bytes_never_raise(data, cuts, with_preface):
    client = Client()
    feed_cut(client, (Client.preface() if with_preface else b"") + data, cuts)
    check_goaway_invariant(client)


@FUZZ
@given(
    calls=st.lists(st.binary(max_size=3000), max_size=6),
    violation=st.sampled_from(ANYTIME),
    cuts=cuts_st,
)
def test_a_violation_after_valid_calls_gets_its_error_code(calls, violation, cuts):
    client = Client()
    build, code = CONNECTION_ERRORS[violation]
    wire = Client.preface()
    sid = 101
    for payload in calls:
        wire += client.call(sid, payload)
        sid += 2
    client.feed(wire)  # valid part first: the violation builders look at client state
    wire = build(client)
    feed_cut(client, wire, cuts)
    check_goaway_invariant(client)
    assert client.conn.error is not None and client.conn.error[0] == code


@FUZZ
@given(
    calls=st.lists(st.tuples(st.binary(max_size=40000), st.booleans()), min_size=1, max_size=5),
    cuts=cuts_st,
    pings=st.lists(st.binary(min_size=8, max_size=8), max_size=3),
)
def test_valid_traffic_is_independent_of_how_reads_are_cut(calls, cuts, pings):
    reference, cut = Client(), Client()
    wire = Client.preface()
    for i, (payload, split) in enumerate(calls):
        sid = 2 * i + 1
        message = Client.message(payload)
        wire += reference.headers(sid)
        cut.headers(sid)  # keep both HPACK encoders in step
        if split and len(message) > 1:
            half = len(message) // 2
            wire += Client.data(sid, message[:half], end=False) + Client.data(sid, message[half:])
        else:
            wire += Client.data(sid, message)
    wire += b"".join(f.frame(FrameType.PING, 0, 0, opaque) for opaque in pings)
    reference.feed(wire)
    events = []
    pos, i = 0, 0
    while pos < len(wire):
        events += cut.conn.receive(wire[pos : pos + cuts[i % len(cuts)] * 97])
        pos += cuts[i % len(cuts)] * 97
        i += 1
    assert [(e.stream_id, e.payload) for e in events] == [
        (e.stream_id, e.payload) for e in reference.events
    ]
    assert [p for p, _ in calls] == [e.payload for e in events]
    assert not cut.conn.closed
    acks = [fr for fr in cut.read() if fr.kind == FrameType.PING]
    assert [fr.payload for fr in acks] == pings


def test_goaway_reports_the_last_stream_seen():
    client = Client()
    client.start()
    client.feed(client.call(9, b"x"))
    client.feed(f.window_update(0, 0))
    goaway = next(fr for fr in client.read() if fr.kind == FrameType.GOAWAY)
    last, code = struct.unpack_from(">LL", goaway.payload)
    assert (last, code) == (9, ErrorCode.PROTOCOL_ERROR)
