"""The sans-IO frame codec (``tykworker.protocol``) and ``peek_object_header``.

Chunking tests follow h11's ``tests/test_io.py``: the same byte stream fed whole, one byte
at a time and in random pieces must give the same frames.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tykworker._proto import coprocess_common_pb2 as common_pb2
from tykworker._proto import coprocess_mini_request_object_pb2 as request_pb2
from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.cli import objects
from tykworker.errors import ProtocolError, TykWorkerError
from tykworker.wire.frames import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    MAGIC,
    VERSION,
    Frame,
    FrameDecoder,
    FrameKind,
    encode_frame,
    encode_header,
    peek_object_header,
)

MAX_CALL_ID = 2**64 - 1

kinds = st.sampled_from(list(FrameKind))
call_ids = st.integers(min_value=0, max_value=MAX_CALL_ID)
frames = st.builds(Frame, kinds, call_ids, st.binary(max_size=300))


def stream(frame_list: list[Frame]) -> bytes:
    return b"".join(encode_frame(f.kind, f.call_id, f.payload) for f in frame_list)


def drain(decoder: FrameDecoder) -> list[Frame]:
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def feed_in_pieces(data: bytes, cuts: list[int]) -> list[Frame]:
    """Feed ``data`` split at ``cuts`` (sorted offsets), draining after every piece as a
    reader loop does."""
    decoder = FrameDecoder()
    out: list[Frame] = []
    bounds = [0, *sorted(cuts), len(data)]
    for start, end in itertools.pairwise(bounds):
        decoder.feed(data[start:end])
        out.extend(drain(decoder))
    return out


def raw_header(
    magic: bytes = MAGIC, version: int = VERSION, kind: int = 1, length: int = 0, call_id: int = 7
) -> bytes:
    return struct.pack(">2sBBIQ", magic, version, kind, length, call_id)


# --- encoding -----------------------------------------------------------------------


def test_header_layout_is_big_endian_16_bytes() -> None:
    data = encode_frame(FrameKind.REPLY, 0x0102030405060708, b"xyz")
    assert HEADER_SIZE == 16
    assert data == (
        b"TW"  # magic
        + b"\x01"  # version
        + b"\x03"  # kind REPLY
        + b"\x00\x00\x00\x03"  # length
        + b"\x01\x02\x03\x04\x05\x06\x07\x08"  # call id
        + b"xyz"
    )


def test_encode_header_is_the_prefix_of_encode_frame() -> None:
    payload = b"p" * 1000
    full = encode_frame(FrameKind.DISPATCH, 42, payload)
    assert encode_header(FrameKind.DISPATCH, 42, len(payload)) == full[:HEADER_SIZE]
    assert full[HEADER_SIZE:] == payload


@pytest.mark.parametrize(("call_id", "length"), [(-1, 0), (2**64, 0), (0, 2**32)])
def test_encoding_unrepresentable_values_raises_protocol_error(call_id: int, length: int) -> None:
    with pytest.raises(ProtocolError):
        encode_header(FrameKind.DISPATCH, call_id, length)
    if length == 0:
        with pytest.raises(ProtocolError):
            encode_frame(FrameKind.DISPATCH, call_id, b"")


@pytest.mark.parametrize("kind", list(FrameKind))
@pytest.mark.parametrize("call_id", [0, 1, MAX_CALL_ID])
@pytest.mark.parametrize("payload", [b"", b"\x00", b"hello" * 100])
def test_round_trip_every_kind(kind: FrameKind, call_id: int, payload: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(kind, call_id, payload))
    frame = decoder.next_frame()
    assert frame == Frame(kind, call_id, payload)
    assert isinstance(frame.kind, FrameKind)
    assert type(frame.payload) is bytes
    assert decoder.next_frame() is None
    assert decoder.buffered == 0


# --- feeding ------------------------------------------------------------------------

SAMPLE = [
    Frame(FrameKind.HELLO, 0, b"\x83\xa3pid\x01"),
    Frame(FrameKind.DISPATCH, 1, b"object bytes"),
    Frame(FrameKind.REPLY, 1, b""),
    Frame(FrameKind.EVENT, 2**63, bytes(range(256))),
    Frame(FrameKind.DRAIN, 3, b""),
]


def test_feed_whole_stream_at_once() -> None:
    decoder = FrameDecoder()
    decoder.feed(stream(SAMPLE))
    assert drain(decoder) == SAMPLE
    assert decoder.buffered == 0


def test_feed_one_byte_at_a_time() -> None:
    data = stream(SAMPLE)
    decoder = FrameDecoder()
    out: list[Frame] = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        frame = decoder.next_frame()
        if frame is not None:
            out.append(frame)
            # A frame is complete exactly when its last byte arrived.
            assert sum(HEADER_SIZE + len(f.payload) for f in out) == i + 1
        assert decoder.next_frame() is None
    assert out == SAMPLE


def test_no_frame_before_header_and_payload_are_complete() -> None:
    data = encode_frame(FrameKind.DISPATCH, 9, b"abcdef")
    decoder = FrameDecoder()
    decoder.feed(data[: HEADER_SIZE - 1])
    assert decoder.next_frame() is None
    decoder.feed(data[HEADER_SIZE - 1 : -1])
    assert decoder.next_frame() is None
    assert decoder.buffered == len(data) - 1
    decoder.feed(data[-1:])
    assert decoder.next_frame() == Frame(FrameKind.DISPATCH, 9, b"abcdef")


def test_accepts_bytearray_and_memoryview() -> None:
    data = stream(SAMPLE)
    decoder = FrameDecoder()
    decoder.feed(bytearray(data[:10]))
    decoder.feed(memoryview(data)[10:])
    assert drain(decoder) == SAMPLE


def test_feeding_empty_bytes_is_harmless() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"")
    assert decoder.next_frame() is None
    decoder.feed(encode_frame(FrameKind.REPLY, 5, b"x"))
    decoder.feed(b"")
    assert drain(decoder) == [Frame(FrameKind.REPLY, 5, b"x")]


def test_several_frames_per_feed_with_trailing_partial_frame() -> None:
    tail = encode_frame(FrameKind.REPLY, 99, b"the end")
    decoder = FrameDecoder()
    decoder.feed(stream(SAMPLE) + tail[:20])
    assert drain(decoder) == SAMPLE
    # The partial frame stays buffered: a reader that sees EOF now knows the peer
    # truncated a frame.
    assert decoder.buffered == 20
    assert not decoder.in_error
    decoder.feed(tail[20:])
    assert drain(decoder) == [Frame(FrameKind.REPLY, 99, b"the end")]
    assert decoder.buffered == 0


def test_trailing_partial_header_then_more_frames() -> None:
    decoder = FrameDecoder()
    data = stream(SAMPLE)
    first = HEADER_SIZE + len(SAMPLE[0].payload)
    decoder.feed(data[: first + 3])
    assert drain(decoder) == SAMPLE[:1]
    assert decoder.buffered == 3
    decoder.feed(data[first + 3 :])
    assert drain(decoder) == SAMPLE[1:]


@given(
    frame_list=st.lists(frames, max_size=12),
    data=st.data(),
)
def test_random_chunkings_give_the_same_frames(
    frame_list: list[Frame], data: st.DataObject
) -> None:
    raw = stream(frame_list)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(raw)), max_size=30))
    assert feed_in_pieces(raw, cuts) == frame_list


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=40_000), min_size=2, max_size=12),
    data=st.data(),
)
def test_random_chunkings_across_buffer_compaction(sizes: list[int], data: st.DataObject) -> None:
    # Frames big enough that the decoder compacts its buffer (> 64 KiB consumed) while a
    # partial frame is still buffered.
    frame_list = [
        Frame(FrameKind.DISPATCH, i, bytes([i % 251]) * size) for i, size in enumerate(sizes)
    ]
    raw = stream(frame_list)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(raw)), max_size=40))
    assert feed_in_pieces(raw, cuts) == frame_list


def test_many_small_frames_in_one_feed() -> None:
    frame_list = [Frame(FrameKind.REPLY, i, i.to_bytes(4, "big")) for i in range(20_000)]
    raw = stream(frame_list)
    # 64 KiB reads, like a socket reader, so partial frames straddle every read.
    assert feed_in_pieces(raw, list(range(65536, len(raw), 65536))) == frame_list


@pytest.mark.timeout(10)
def test_large_frame_fed_in_small_reads_decodes() -> None:
    # 20 MiB in 1 KiB reads with a next_frame() poll after each read (20k reads). A linear
    # decoder needs ~0.1 s; one that copies its whole buffer on every read needed ~15 s
    # here and one that re-parses it in Python far longer, so the generous timeout guard
    # catches quadratic behaviour without a timing assertion.
    payload = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    raw = encode_frame(FrameKind.DISPATCH, 1, payload) + encode_frame(FrameKind.REPLY, 2, b"x")
    decoder = FrameDecoder()
    got: list[Frame] = []
    view = memoryview(raw)
    for start in range(0, len(raw), 1024):
        decoder.feed(view[start : start + 1024])
        got.extend(drain(decoder))
    assert [(f.kind, f.call_id, len(f.payload)) for f in got] == [
        (FrameKind.DISPATCH, 1, len(payload)),
        (FrameKind.REPLY, 2, 1),
    ]
    assert got[0].payload == payload
    assert decoder.buffered == 0


# --- errors -------------------------------------------------------------------------


def assert_stays_broken(decoder: FrameDecoder) -> None:
    assert decoder.in_error
    with pytest.raises(ProtocolError):
        decoder.next_frame()
    with pytest.raises(ProtocolError):
        decoder.feed(encode_frame(FrameKind.REPLY, 1, b"valid"))
    with pytest.raises(ProtocolError):
        decoder.next_frame()


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (raw_header(magic=b"HT"), "magic"),
        (raw_header(magic=b"tw"), "magic"),
        (raw_header(version=0), "version"),
        (raw_header(version=2), "version"),
        (raw_header(kind=0), "kind"),
        (raw_header(kind=7), "kind"),
        (raw_header(kind=255), "kind"),
        (raw_header(length=DEFAULT_MAX_PAYLOAD + 1), "limit"),
        (raw_header(length=2**32 - 1), "limit"),
    ],
)
def test_bad_header_raises_and_decoder_stays_in_error(header: bytes, match: str) -> None:
    decoder = FrameDecoder()
    assert not decoder.in_error
    decoder.feed(header)  # no payload needed: the header alone is rejected
    with pytest.raises(ProtocolError, match=match) as excinfo:
        decoder.next_frame()
    assert isinstance(excinfo.value, TykWorkerError)
    assert_stays_broken(decoder)


def test_http2_preface_is_rejected() -> None:
    # What a gRPC client sends if pointed at the raw socket by mistake.
    decoder = FrameDecoder()
    decoder.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    with pytest.raises(ProtocolError):
        decoder.next_frame()
    assert_stays_broken(decoder)


def test_bad_frame_after_good_frames_returns_good_ones_first() -> None:
    decoder = FrameDecoder()
    decoder.feed(stream(SAMPLE[:2]) + raw_header(version=9) + b"junk")
    assert decoder.next_frame() == SAMPLE[0]
    assert decoder.next_frame() == SAMPLE[1]
    with pytest.raises(ProtocolError, match="version"):
        decoder.next_frame()
    assert_stays_broken(decoder)


def test_bad_header_split_across_feeds_is_detected_when_complete() -> None:
    decoder = FrameDecoder()
    bad = raw_header(kind=77)
    for i in range(HEADER_SIZE - 1):
        decoder.feed(bad[i : i + 1])
        assert decoder.next_frame() is None
    decoder.feed(bad[-1:])
    with pytest.raises(ProtocolError):
        decoder.next_frame()
    assert_stays_broken(decoder)


def test_payload_limit_is_inclusive() -> None:
    decoder = FrameDecoder(max_payload=10)
    decoder.feed(encode_frame(FrameKind.DISPATCH, 1, b"0123456789"))
    assert decoder.next_frame() == Frame(FrameKind.DISPATCH, 1, b"0123456789")
    decoder.feed(encode_header(FrameKind.DISPATCH, 2, 11))
    with pytest.raises(ProtocolError, match="11 bytes exceeds the limit of 10"):
        decoder.next_frame()
    assert_stays_broken(decoder)


@given(garbage=st.binary(min_size=HEADER_SIZE, max_size=64))
def test_garbage_either_decodes_or_raises_protocol_error(garbage: bytes) -> None:
    decoder = FrameDecoder(max_payload=1024)
    decoder.feed(garbage)
    try:
        drain(decoder)
    except ProtocolError:
        assert_stays_broken(decoder)
    else:
        # Only possible if it starts with a valid header.
        assert garbage[:3] == MAGIC + bytes([VERSION])


# --- peek_object_header -------------------------------------------------------------

HOOK_TYPES = [
    common_pb2.Unknown,
    common_pb2.Pre,
    common_pb2.Post,
    common_pb2.PostKeyAuth,
    common_pb2.CustomKeyCheck,
    common_pb2.Response,
]


#: The top-level fields of an Object, in schema order (hook_type and hook_name first).
OBJECT_FIELDS = [field.name for field in object_pb2.Object.DESCRIPTOR.fields]


def full_object_fields(hook_type: int, hook_name: str) -> list[object_pb2.Object]:
    """What the gateway sends (``objects.gateway_object``, with long and binary values to
    skip), as one single-field Object per entry of ``OBJECT_FIELDS``.

    Serialising each alone and concatenating them in any order gives a valid encoding of
    the merged Object (protobuf merges concatenated messages), which is how fields in an
    arbitrary order are produced.
    """
    whole = objects.gateway_object(
        hook_type,
        hook_name,
        headers={"Authorization": "abc", "X-Long": "v" * 300},
        body=b"\x00\xff" * 500,
        session=objects.authenticated_session() if hook_type in objects.SESSION_HOOKS else None,
    )
    parts = []
    for name in OBJECT_FIELDS:
        part = object_pb2.Object()
        part.CopyFrom(whole)
        for other in OBJECT_FIELDS:
            if other != name:
                part.ClearField(other)
        parts.append(part)
    return parts


@pytest.mark.parametrize("hook_type", HOOK_TYPES)
def test_peek_reads_a_real_serialized_object(hook_type: common_pb2.HookType) -> None:
    obj = object_pb2.Object()
    for part in full_object_fields(hook_type, "MyPreMiddleware"):
        obj.MergeFrom(part)
    assert peek_object_header(obj.SerializeToString()) == (hook_type, "MyPreMiddleware")


# The peek cases below build Objects field by field on purpose: they are about protobuf
# encodings (empty and default values, field order, repeated and unknown fields), which a
# gateway-shaped Object would not isolate.


def test_peek_on_empty_and_default_objects() -> None:
    assert peek_object_header(b"") == (0, "")
    assert peek_object_header(object_pb2.Object().SerializeToString()) == (0, "")
    only_name = object_pb2.Object(hook_name="OnlyName").SerializeToString()
    assert peek_object_header(only_name) == (0, "OnlyName")


def test_peek_skips_a_large_body_by_length() -> None:
    obj = object_pb2.Object(
        request=request_pb2.MiniRequestObject(raw_body=b"\x12\x05" * (2 * 1024 * 1024)),
        hook_name="AfterBody",
        hook_type=common_pb2.Post,
    )
    # Serialised in field order: type, name, then the 4 MiB request. Put the request first
    # so the peek has to skip it to reach the header fields.
    data = (
        object_pb2.Object(request=obj.request).SerializeToString()
        + object_pb2.Object(hook_type=common_pb2.Post, hook_name="AfterBody").SerializeToString()
    )
    assert peek_object_header(data) == (common_pb2.Post, "AfterBody")


def test_peek_last_value_wins_like_protobuf() -> None:
    data = (
        object_pb2.Object(hook_type=common_pb2.Pre, hook_name="first").SerializeToString()
        + object_pb2.Object(hook_type=common_pb2.Response, hook_name="second").SerializeToString()
    )
    parsed = object_pb2.Object.FromString(data)
    assert peek_object_header(data) == (parsed.hook_type, parsed.hook_name) == (5, "second")


def test_peek_skips_unknown_fixed_width_fields() -> None:
    # Field 20 as fixed64 (wire type 1) and field 21 as fixed32 (wire type 5): not in the
    # schema, but valid protobuf that a newer gateway could send.
    unknown = _key(20, 1) + b"\x01" * 8 + _key(21, 5) + b"\x02" * 4
    data = (
        unknown
        + object_pb2.Object(hook_type=common_pb2.PostKeyAuth, hook_name="Auth").SerializeToString()
    )
    parsed = object_pb2.Object.FromString(data)
    assert (parsed.hook_type, parsed.hook_name) == (3, "Auth")
    assert peek_object_header(data) == (3, "Auth")


@pytest.mark.parametrize(
    "data",
    [
        b"\x08",  # hook_type key without value
        b"\x08\xff",  # truncated varint
        b"\x12\x05abc",  # hook_name shorter than its length
        b"\x08" + b"\xff" * 11 + b"\x01",  # overlong varint
        b"\x0b",  # start-group wire type
        b"\x0e",  # wire type 6 does not exist
        b"\x08\x01\x11\x00\x00",  # fixed64 field cut short
        b"\x08\x01\x15\x00",  # fixed32 field cut short
    ],
)
def test_peek_invalid_encodings_give_the_empty_header(data: bytes) -> None:
    with pytest.raises(DecodeError):
        object_pb2.Object.FromString(data)
    assert peek_object_header(data) == (0, "")


@given(
    hook_type=st.sampled_from(HOOK_TYPES),
    hook_name=st.text(max_size=40),
    order=st.permutations(range(len(OBJECT_FIELDS))),
    keep=st.lists(st.booleans(), min_size=len(OBJECT_FIELDS), max_size=len(OBJECT_FIELDS)),
)
def test_peek_fields_in_any_order(
    hook_type: common_pb2.HookType, hook_name: str, order: list[int], keep: list[bool]
) -> None:
    parts = full_object_fields(hook_type, hook_name)
    keep[0] = keep[1] = True
    data = b"".join(parts[i].SerializeToString() for i in order if keep[i])
    parsed = object_pb2.Object.FromString(data)
    assert (parsed.hook_type, parsed.hook_name) == (hook_type, hook_name)
    assert peek_object_header(data) == (hook_type, hook_name)


#: hook_type = -1: a ten-byte varint, as protobuf encodes a negative int32 enum value.
NEGATIVE_HOOK_TYPE = bytes.fromhex("08ffffffffffffffffff01")


@given(data=st.binary(max_size=200))
@example(data=NEGATIVE_HOOK_TYPE)
def test_peek_never_raises_on_garbage(data: bytes) -> None:
    hook_type, hook_name = peek_object_header(data)
    assert isinstance(hook_type, int)
    assert -(2**31) <= hook_type < 2**31  # a signed int32, like protobuf's enum field
    assert isinstance(hook_name, str)


@given(data=st.binary(max_size=200))
@example(data=NEGATIVE_HOOK_TYPE)
def test_peek_agrees_with_protobuf_when_protobuf_accepts(data: bytes) -> None:
    try:
        parsed = object_pb2.Object.FromString(data)
    except DecodeError:
        return
    if any(wire in (3, 4) for wire in _top_level_wire_types(data)):
        return  # groups: legal protobuf, never sent by the gateway, peek gives up on them
    assert peek_object_header(data) == (parsed.hook_type, parsed.hook_name)


def _key(number: int, wire: int) -> bytes:
    """A protobuf field key as a varint (test helper)."""
    value, out = number << 3 | wire, bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _top_level_wire_types(data: bytes) -> list[int]:
    """Wire types of the top-level keys, as far as they can be walked (test helper)."""
    out, pos = [], 0
    while pos < len(data):
        key, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            key |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        wire = key & 7
        out.append(wire)
        if wire == 0:
            while data[pos] & 0x80:
                pos += 1
            pos += 1
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, shift = 0, 0
            while True:
                byte = data[pos]
                pos += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            pos += length
        elif wire == 5:
            pos += 4
        else:
            return out
    return out


@pytest.mark.parametrize("hook_type", [-1, -1610612736, 2**31 - 1])
def test_peek_reads_hook_type_as_a_signed_int32_like_protobuf(hook_type: int) -> None:
    """Found by the fuzz test: enum values are int32, a 10-byte varint may carry a negative
    one; peek must agree with protobuf's own reading."""
    data = object_pb2.Object(hook_type=hook_type, hook_name="n").SerializeToString()  # type: ignore[arg-type]
    assert peek_object_header(data) == (object_pb2.Object.FromString(data).hook_type, "n")
