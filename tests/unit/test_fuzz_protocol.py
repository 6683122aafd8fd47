"""Fuzzing the frame codec with whole streams: valid frames followed by one kind of damage
(truncation, an oversized length, garbage), cut into arbitrary reads.

The properties, for any stream and any chunking:
* every complete valid frame before the damage comes out, in order, exactly once;
* truncation is never an error: the decoder just waits (``buffered`` = the partial bytes);
* an oversized length is refused as soon as the header is complete, without waiting for
  (or buffering) the announced payload;
* garbage raises ``ProtocolError`` once the bad header is complete, and every later call
  raises again (the caller closes the channel); nothing but ``ProtocolError`` escapes.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_protocol import _top_level_wire_types
from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.errors import ProtocolError
from tykworker.wire.frames import (
    HEADER_SIZE,
    MAGIC,
    VERSION,
    Frame,
    FrameDecoder,
    FrameKind,
    encode_frame,
    peek_object_header,
)

LIMIT = 256

frames = st.lists(
    st.builds(
        Frame,
        st.sampled_from(list(FrameKind)),
        st.integers(0, 2**64 - 1),
        st.binary(max_size=LIMIT),
    ),
    max_size=12,
)


@st.composite
def garbage_headers(draw: st.DrawFn) -> bytes:
    """16 bytes that are not a valid header: wrong magic, version or kind."""
    which = draw(st.sampled_from(["magic", "version", "kind"]))
    magic = (
        MAGIC
        if which != "magic"
        else draw(st.binary(min_size=2, max_size=2).filter(lambda m: m != MAGIC))
    )
    version = (
        VERSION if which != "version" else draw(st.integers(0, 255).filter(lambda v: v != VERSION))
    )
    valid = {int(k) for k in FrameKind}
    kind = 1 if which != "kind" else draw(st.integers(0, 255).filter(lambda k: k not in valid))
    return struct.pack(">2sBBIQ", magic, version, kind, draw(st.integers(0, LIMIT)), 0)


def _cuts(data: bytes, drawn: st.DataObject) -> list[bytes]:
    """``data`` split at points ``drawn`` chooses (sometimes byte by byte)."""
    if len(data) < 64 and drawn.draw(st.booleans()):
        return [data[i : i + 1] for i in range(len(data))]
    points = sorted(drawn.draw(st.sets(st.integers(0, len(data)), max_size=8)))
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _decode(chunks: list[bytes], decoder: FrameDecoder) -> tuple[list[Frame], ProtocolError | None]:
    out: list[Frame] = []
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while (frame := decoder.next_frame()) is not None:
                out.append(frame)
    except ProtocolError as exc:
        return out, exc
    return out, None


def _stream(good: list[Frame]) -> bytes:
    return b"".join(encode_frame(f.kind, f.call_id, f.payload) for f in good)


@settings(max_examples=300)
@given(good=frames, data=st.data())
def test_valid_frames_then_a_truncated_one_wait_for_more(good: list[Frame], data: st.DataObject):
    tail = encode_frame(FrameKind.DISPATCH, 7, b"x" * 40)
    cut = data.draw(st.integers(1, len(tail) - 1))
    decoder = FrameDecoder(LIMIT)
    out, error = _decode(_cuts(_stream(good) + tail[:cut], data), decoder)
    assert error is None and out == good
    assert decoder.next_frame() is None and decoder.buffered == cut
    decoder.feed(tail[cut:])  # the rest arrives: the frame completes
    assert decoder.next_frame() == Frame(FrameKind.DISPATCH, 7, b"x" * 40)


@settings(max_examples=300)
@given(good=frames, excess=st.integers(1, 2**32 - 1 - LIMIT), data=st.data())
def test_oversized_length_is_refused_on_its_header_alone(
    good: list[Frame], excess: int, data: st.DataObject
):
    header = struct.pack(">2sBBIQ", MAGIC, VERSION, 1, LIMIT + excess, 1)
    decoder = FrameDecoder(LIMIT)
    out, error = _decode(_cuts(_stream(good) + header, data), decoder)
    assert out == good
    assert isinstance(error, ProtocolError) and "exceeds the limit" in str(error)
    assert decoder.in_error


@settings(max_examples=300)
@given(good=frames, bad=garbage_headers(), trailer=st.binary(max_size=64), data=st.data())
def test_garbage_after_valid_frames_is_an_error_forever(
    good: list[Frame], bad: bytes, trailer: bytes, data: st.DataObject
):
    decoder = FrameDecoder(LIMIT)
    out, error = _decode(_cuts(_stream(good) + bad + trailer, data), decoder)
    assert out == good
    assert isinstance(error, ProtocolError)
    for call in (lambda: decoder.feed(b"TW"), decoder.next_frame):
        with pytest.raises(ProtocolError):
            call()


@settings(max_examples=300)
@given(noise=st.binary(max_size=512), data=st.data())
def test_arbitrary_bytes_only_ever_raise_protocol_error(noise: bytes, data: st.DataObject):
    decoder = FrameDecoder(LIMIT)
    out, error = _decode(_cuts(noise, data), decoder)
    assert error is None or decoder.in_error
    consumed = sum(HEADER_SIZE + len(f.payload) for f in out)
    assert consumed <= len(noise)
    if error is None:
        assert decoder.buffered == len(noise) - consumed


def test_ten_thousand_frames_in_one_read():
    good = [Frame(FrameKind.REPLY, i, i.to_bytes(4, "big")) for i in range(10_000)]
    decoder = FrameDecoder(LIMIT)
    out, error = _decode([_stream(good)], decoder)
    assert error is None and out == good and decoder.buffered == 0


@settings(max_examples=300)
@given(
    name=st.text(max_size=30),
    hook_type=st.integers(-(2**31), 2**31 - 1),
    cut=st.integers(0, 200),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
)
def test_peek_on_damaged_objects_never_raises_and_agrees_with_protobuf(
    name: str, hook_type: int, cut: int, flips: list[tuple[int, int]]
):
    obj = object_pb2.Object(hook_type=hook_type, hook_name=name)  # type: ignore[arg-type]
    obj.request.headers.update({"Authorization": "x" * 20, "A": "b"})
    obj.request.raw_body = b"\xff\xfe" * 20
    data = bytearray(obj.SerializeToString()[: max(0, len(obj.SerializeToString()) - cut)])
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    peeked = peek_object_header(bytes(data))
    try:
        parsed = object_pb2.Object.FromString(bytes(data))
    except Exception:  # protobuf refuses it: peek just must not raise
        return
    if any(wire in (3, 4) for wire in _top_level_wire_types(bytes(data))):
        return  # groups: legal protobuf, never sent by the gateway, peek gives up on them
    assert peeked == (parsed.hook_type, parsed.hook_name)


def _decode_direct(
    chunks: list[bytes], decoder: FrameDecoder, receive: bool
) -> tuple[list[Frame], ProtocolError | None]:
    """Like ``_decode``; with ``receive``, bytes go into ``direct_buffer`` whenever it offers
    one (what the worker's ``recv_into`` does), the rest through ``feed``."""
    out: list[Frame] = []
    try:
        for chunk in chunks:
            while chunk:
                target = decoder.direct_buffer() if receive else None
                if target is None:
                    decoder.feed(chunk)
                    chunk = b""
                else:
                    n = min(len(target), len(chunk))
                    target[:n] = chunk[:n]
                    target.release()
                    decoder.advance(n)
                    chunk = chunk[n:]
                while (frame := decoder.next_frame()) is not None:
                    out.append(frame)
    except ProtocolError as exc:
        return out, exc
    return out, None


@settings(max_examples=300)
@given(
    good=frames,
    direct_from=st.integers(1, LIMIT),
    receive=st.booleans(),
    data=st.data(),
)
def test_large_payloads_in_their_own_buffer_decode_the_same(
    good: list[Frame], direct_from: int, receive: bool, data: st.DataObject
):
    """``direct_from`` changes where payloads are gathered, never what comes out: the
    same frames for any chunking, mixing ``feed`` and ``direct_buffer``, and ``buffered``
    still counts a partial frame's bytes."""
    tail = encode_frame(FrameKind.DISPATCH, 7, b"x" * 40)
    cut = data.draw(st.integers(1, len(tail) - 1))
    decoder = FrameDecoder(LIMIT, direct_from=direct_from)
    out, error = _decode_direct(_cuts(_stream(good) + tail[:cut], data), decoder, receive)
    assert error is None and out == good
    for frame in out:  # only a large payload that came in pieces has its own buffer
        assert isinstance(frame.payload, bytes) or len(frame.payload) >= direct_from
    assert decoder.next_frame() is None and decoder.buffered == cut
    out, error = _decode_direct([tail[cut:]], decoder, receive)
    assert error is None and out == [Frame(FrameKind.DISPATCH, 7, b"x" * 40)]
    assert decoder.buffered == 0


def test_without_direct_from_a_header_alone_allocates_nothing():
    """The raw socket's decoder: a header announcing a large payload gets no buffer of that
    size (only what the client sent is held)."""
    decoder = FrameDecoder(64 * 1024 * 1024)
    decoder.feed(encode_frame(FrameKind.DISPATCH, 1, b"")[:4] + struct.pack(">IQ", 60 << 20, 1))
    assert decoder.next_frame() is None and decoder.direct_buffer() is None
    assert decoder.buffered == HEADER_SIZE
