"""The grpcio front (``front = grpcio``) keeps the native front's bounds where grpcio has
an option for them (README "The front's memory bound"): streams per connection, header
list sizes, the connection cap, the preface and idle timeouts. Real server with
``--front grpcio``, hand-written HTTP/2 frames on Unix connections (the native front's
tests are in test_hostile_clients.py). Every wait is on a condition, never a sleep.
"""

from __future__ import annotations

import contextlib
import struct

import grpc
import pytest

from tykworker.front.h2 import frames as f
from tykworker.front.h2.frames import FrameType, Setting
from tykworker.front.h2.state import Limits

from .conftest import make_object, wait_for
from .test_hostile_clients import H2Client, clients, echo_payload, limits

pytestmark = pytest.mark.integration
__all__ = ["clients"]  # the fixture, used by name

GRPCIO = {"TYKWORKER_FRONT": "grpcio"}


def call(client: H2Client, sid: int) -> bytes:
    """An Echo call as grpcio wants it (``te: trailers``; the native front does not ask)."""
    payload = echo_payload()
    message = struct.pack(">BL", 0, len(payload)) + payload
    return client.headers(sid, ((b"te", b"trailers"),)) + client.data(sid, message, True)


def settings_of(client: H2Client) -> dict[int, int]:
    """The values of the server's first SETTINGS frame."""
    client.wait(lambda c: any(fr.kind == FrameType.SETTINGS and not fr.flags for fr in c.frames))
    frame = next(fr for fr in client.frames if fr.kind == FrameType.SETTINGS and not fr.flags)
    pairs = (struct.unpack_from(">HL", frame.payload, i) for i in range(0, len(frame.payload), 6))
    return dict(pairs)


def test_grpcio_front_announces_the_native_fronts_stream_limit(start_server, clients):
    server = start_server("--workers", "1", env=GRPCIO)
    client = H2Client(server.socket)
    clients.append(client)
    client.send(client.preface())
    values = settings_of(client)
    assert values.get(Setting.MAX_CONCURRENT_STREAMS) == Limits().max_streams
    client.send(call(client, 1))  # and it serves
    client.wait(lambda c: c.status(1) is not None)
    assert client.status(1) == 0


def test_grpcio_front_closes_a_stalled_preface_and_an_idle_connection(start_server, clients):
    server = start_server(
        "--workers", "1", env={**GRPCIO, **limits(preface_timeout=0.3, idle_timeout=0.6)}
    )
    stalled = H2Client(server.socket)
    idle = H2Client(server.socket)
    clients += [stalled, idle]
    stalled.send(f.PREFACE[:5])
    idle.send(idle.preface() + call(idle, 1))
    stalled.wait(lambda c: c.eof)  # no preface within 0.3 s (grpcio's default: 120 s)
    idle.wait(lambda c: c.status(1) == 0)
    idle.wait(lambda c: c.goaway() is not None)  # no call for 0.6 s (default: never)


def test_grpcio_front_caps_its_connections(start_server, clients):
    server = start_server("--workers", "1", env={**GRPCIO, **limits(max_connections=2)})
    held = [H2Client(server.socket) for _ in range(2)]
    clients += held
    for client in held:
        client.send(client.preface())
        client.ping()
    late = H2Client(server.socket)
    clients.append(late)
    with contextlib.suppress(OSError):  # grpcio may close before all of it is sent
        late.send(late.preface() + call(late, 1))
    late.wait(lambda c: c.eof or c.status(1) is not None)
    assert late.status(1) is None and late.eof  # closed unanswered: over the cap
    held[0].close()

    def admitted_and_answered() -> bool:  # once grpcio has seen the client leave
        client = H2Client(server.socket)
        clients.append(client)
        try:
            client.send(client.preface() + call(client, 1))
        except OSError:  # still over the cap: grpcio closed it before all of it was sent
            return False
        client.wait(lambda c: c.eof or c.status(1) is not None)
        return client.status(1) == 0

    wait_for(admitted_and_answered, what="a call on the freed slot")


def test_grpcio_front_takes_header_lists_up_to_the_native_limit_and_refuses_more(start_server):
    """The native front's 64 KiB: a 32 KiB list is served (grpcio's default hard limit,
    16 KiB, refused it), every list over 64 KiB is refused (set between grpcio's soft and
    hard limits, one was refused at random: 2 of 5 runs got through)."""
    server = start_server("--workers", "1", env=GRPCIO)
    method = server.channel.unary_unary("/coprocess.Dispatcher/Dispatch")
    payload = make_object("Echo").SerializeToString()
    served = [(f"x-m-{i}", "v" * 60) for i in range(32 * 1024 // 100)]  # ~32 KiB (HPACK sizes)
    method(payload, timeout=10, metadata=served)
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as info:
            method(payload, timeout=10, metadata=[(f"x-m-{i}", "v") for i in range(10_000)])
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
