"""The trace context codec (wire/tracecontext.py), the native front's header pick-up
(front/h2/heads.py), and tracing.py's decisions and extraction (pure, no exporter)."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from tykworker import tracing
from tykworker.errors import ConfigError
from tykworker.front.h2.heads import parse_request
from tykworker.wire import tracecontext
from tykworker.wire.frames import FrameDecoder, FrameKind, encode_frame

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/coprocess.Dispatcher/Dispatch"),
    (b"content-type", b"application/grpc"),
]


def test_a_carrier_holds_only_propagation_headers_and_round_trips():
    headers = {
        b"traceparent": TRACEPARENT,
        b"tracestate": b"a=1,b=2",
        b"x-b3-sampled": b"1",
        b"user-agent": b"grpc-go",
    }
    carrier = tracecontext.carrier_of(headers)
    assert carrier is not None
    assert tracecontext.decode_carrier(carrier) == {
        "traceparent": TRACEPARENT.decode(),
        "tracestate": "a=1,b=2",
        "x-b3-sampled": "1",
    }


def test_no_propagation_header_no_carrier():
    assert tracecontext.carrier_of({b"user-agent": b"grpc-go"}) is None
    assert tracecontext.carrier_of_pairs([("user-agent", "grpc-go")]) is None


def test_an_oversized_value_is_left_out_not_truncated():
    headers = {b"traceparent": TRACEPARENT, b"tracestate": b"x" * (tracecontext.MAX_VALUE + 1)}
    carrier = tracecontext.carrier_of(headers)
    assert carrier is not None
    assert tracecontext.decode_carrier(carrier) == {"traceparent": TRACEPARENT.decode()}


def test_grpc_metadata_pairs_first_value_wins_and_binary_values_are_ignored():
    pairs: list[tuple[str, str | bytes]] = [
        ("traceparent", "first"),
        ("traceparent", "second"),
        ("b3", b"binary"),
    ]
    carrier = tracecontext.carrier_of_pairs(pairs)
    assert carrier is not None
    assert tracecontext.decode_carrier(carrier) == {"traceparent": "first"}


def test_a_traced_frame_splits_into_context_and_the_untouched_object():
    carrier = tracecontext.carrier_of({b"b3": b"a-b-1"})
    assert carrier is not None
    prefix = tracecontext.prefix(carrier, 10.0, 10.25)
    payload = prefix + b"\x08\x01object bytes"
    decoder = FrameDecoder()
    decoder.feed(encode_frame(FrameKind.DISPATCH_TRACED, 7, payload))
    frame = decoder.next_frame()
    assert frame is not None and frame.kind == FrameKind.DISPATCH_TRACED
    context, body = tracecontext.split(frame.payload)
    assert body == b"\x08\x01object bytes"
    assert context.headers == {"b3": "a-b-1"}
    assert (context.arrived, context.sent, context.queue_wait) == (10.0, 10.25, 0.25)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00\x05" + b"\x00" * 16,  # prefix length shorter than its fixed fields
        b"\xff\xff" + b"\x00" * 16,  # longer than the frame
        tracecontext.prefix(b"\x01\x00\x09abc", 0.0, 0.0),  # value runs past the prefix
        tracecontext.prefix(b"\x63\x00\x00", 0.0, 0.0),  # unknown header code
        tracecontext.prefix(b"\x01\x00", 0.0, 0.0),  # truncated entry
    ],
)
def test_a_bad_prefix_is_a_value_error(payload):
    with pytest.raises(ValueError):
        tracecontext.split(payload)


def test_the_native_head_carries_the_context_only_when_tracing():
    headers = [*REQUEST, (b"traceparent", TRACEPARENT)]
    assert parse_request(headers, 65536).trace is None
    head = parse_request(headers, 65536, trace=True)
    assert head.trace is not None
    assert tracecontext.decode_carrier(head.trace) == {"traceparent": TRACEPARENT.decode()}
    assert parse_request(REQUEST, 65536, trace=True).trace is None
    health = [*REQUEST[:2], (b":path", b"/grpc.health.v1.Health/Check"), *REQUEST[3:]]
    assert parse_request([*health, (b"traceparent", TRACEPARENT)], 65536, True).trace is None


@pytest.mark.parametrize(
    ("setting", "environ", "expected"),
    [
        ("auto", {}, False),
        ("auto", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ("auto", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ("on", {}, True),
        ("off", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ("on", {"OTEL_SDK_DISABLED": "true"}, False),
        ("on", {"OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_when_tracing_is_on(setting, environ, expected):
    assert tracing.enabled(setting, environ) is expected


def test_check_names_what_is_wrong(monkeypatch):
    assert tracing.check("off", {}) is False
    assert tracing.check("on", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) is True
    with pytest.raises(ConfigError, match="http/json"):
        tracing.check("on", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    with pytest.raises(ConfigError, match="zipkin"):
        tracing.check("on", {"OTEL_TRACES_EXPORTER": "zipkin"})
    monkeypatch.setattr(tracing, "_installed", lambda module: module != "opentelemetry.sdk")
    with pytest.raises(ConfigError, match=r"opentelemetry.sdk is not installed.*tracing\]"):
        tracing.check("on", {})


def _parent(headers: dict[str, str]) -> tuple[str, str, bool]:
    context = trace.get_current_span(tracing.extract(headers)).get_span_context()
    return (
        format(context.trace_id, "032x"),
        format(context.span_id, "016x"),
        context.trace_flags.sampled,
    )


def test_extraction_understands_w3c_and_both_b3_forms():
    w3c = _parent({"traceparent": TRACEPARENT.decode()})
    assert w3c == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
    single = _parent({"b3": f"{'a' * 32}-{'b' * 16}-0"})
    assert single == ("a" * 32, "b" * 16, False)
    multi = _parent({"x-b3-traceid": "c" * 32, "x-b3-spanid": "d" * 16, "x-b3-sampled": "1"})
    assert multi == ("c" * 32, "d" * 16, True)
    both = _parent({"traceparent": TRACEPARENT.decode(), "b3": f"{'a' * 32}-{'b' * 16}-1"})
    assert both == w3c  # W3C wins
    assert _parent({})[0] == "0" * 32  # no context: an invalid (root) parent


def test_a_traced_frame_with_a_bad_prefix_is_still_served_once():
    from tykworker.worker import tracing as worker_tracing

    served: list[tuple[int, bytes | bytearray]] = []
    worker_tracing.run(FrameKind.DISPATCH_TRACED, b"\xff\xff", lambda k, p: served.append((k, p)))
    assert served == [(FrameKind.DISPATCH, b"\xff\xff")]  # the runtime's bad-payload answer
    carrier = tracecontext.carrier_of({b"traceparent": TRACEPARENT})
    assert carrier is not None
    good = tracecontext.prefix(carrier, 1.0, 2.0) + b"event"
    worker_tracing.run(FrameKind.EVENT_TRACED, good, lambda k, p: served.append((k, p)))
    assert served[1] == (FrameKind.EVENT, b"event")  # no tracer here: served as the plain call
