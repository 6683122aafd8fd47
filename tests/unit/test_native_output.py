"""The native front's output rule (front/native.py): one write per loop iteration and
connection. What a read produces (here the ACK of a gRPC-Go BDP PING) and the answers
that come back in the same iteration (here from a handler answering with ``call_soon``,
as a worker's reply read in the same epoll batch does) leave in one ``transport.write``:
the client is woken once, not once for the ACK and once for the answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.unit.test_h2conn import Client, kinds
from tykworker.front.h2 import frames as f
from tykworker.front.h2.frames import FrameType
from tykworker.front.h2.state import Limits
from tykworker.front.native import H2Protocol, NativeServer
from tykworker.wire.frames import FrameKind, Payload

BDP_PING = bytes([2, 4, 16, 16, 9, 14, 7, 7])  # the opaque data gRPC-Go's BDP pings carry


class Transport:
    """Records every write; the rest of the transport interface does nothing."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, pieces: list[Any]) -> None:
        self.writes.append(b"".join(pieces))

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


async def _one_iteration() -> None:
    for _ in range(3):  # the handler's call_soon, then the flush it comes before
        await asyncio.sleep(0)


def run_calls(answer_later: bool) -> tuple[Transport, Client]:
    async def main() -> tuple[Transport, Client]:
        loop = asyncio.get_running_loop()

        def handler(
            kind: FrameKind,
            payload: Payload,
            timeout: float | None,
            respond: Callable[[Payload], None],
            trace: bytes | None,
        ) -> None:
            if answer_later:
                loop.call_soon(respond, b"reply")
            else:
                respond(b"reply")

        server = NativeServer(handler, Limits(max_message=1 << 20), 1 << 20)
        protocol = H2Protocol(server)
        transport = Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        client = Client()  # its encoder/decoder only; the protocol owns the connection
        protocol.data_received(client.preface())
        await _one_iteration()
        transport.writes.clear()
        # What a loaded gateway sends in one segment: a new call, and the PING it sends
        # after reading the previous answer.
        call = client.call(1, b"request")
        protocol.data_received(call + f.frame(FrameType.PING, 0, 0, BDP_PING))
        await _one_iteration()
        return transport, client

    return asyncio.run(main())


def test_ping_ack_and_answers_of_the_same_iteration_share_one_write() -> None:
    transport, client = run_calls(answer_later=True)
    assert len(transport.writes) == 1, transport.writes
    frames = client.frames_in(transport.writes[0])
    assert kinds(frames) == ["PING", "HEADERS", "DATA", "HEADERS"]
    assert frames[0].flags & f.ACK and frames[0].payload == BDP_PING
    assert frames[-1].headers[b"grpc-status"] == b"0"


def test_answers_made_during_the_read_leave_with_its_ack() -> None:
    transport, client = run_calls(answer_later=False)
    assert len(transport.writes) == 1, transport.writes
    assert kinds(client.frames_in(transport.writes[0])) == ["PING", "HEADERS", "DATA", "HEADERS"]
