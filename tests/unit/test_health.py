"""The health service's wire format and status logic, without a gRPC server."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from tykworker.front.grpcio import check_health
from tykworker.front.health import Health, ServingStatus, decode_request, encode_response


def _request(service: str) -> bytes:
    raw = service.encode()
    return (b"\x0a" + bytes([len(raw)]) + raw) if raw else b""


@pytest.mark.parametrize("service", ["", "coprocess.Dispatcher", "x" * 100])
def test_request_round_trip(service):
    assert decode_request(_request(service)) == service


def test_request_unknown_fields_are_skipped():
    data = b"\x10\x05" + _request("svc") + b"\x1d\x00\x00\x00\x00" + b"\x21" + b"\x00" * 8
    assert decode_request(data) == "svc"


@pytest.mark.parametrize("data", [b"\x0a\x05ab", b"\x0a", b"\x0b", b"\x1d\x00"])
def test_malformed_requests_raise(data):
    with pytest.raises(ValueError):
        decode_request(data)


def test_response_encoding():
    assert encode_response(ServingStatus.SERVING) == b"\x08\x01"
    assert encode_response(ServingStatus.NOT_SERVING) == b"\x08\x02"
    assert encode_response(ServingStatus.UNKNOWN) == b""  # proto3 default


class _Aborted(Exception):
    pass


class _Context:
    code: grpc.StatusCode | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> Any:
        self.code = code
        raise _Aborted(details)


def test_check_statuses():
    serving = [False]

    async def scenario() -> None:
        health = Health(lambda: serving[0])
        context: Any = _Context()
        assert await check_health(health, _request(""), context) == b"\x08\x02"
        serving[0] = True
        assert await check_health(health, _request("coprocess.Dispatcher"), context) == b"\x08\x01"
        with pytest.raises(_Aborted):
            await check_health(health, _request("other"), context)
        assert context.code == grpc.StatusCode.NOT_FOUND
        health.close()
        assert await check_health(health, _request(""), context) == b"\x08\x02"

    asyncio.run(scenario())


def test_watch_sends_changes_and_ends_on_close():
    serving = [False]

    async def scenario() -> list[bytes]:
        health = Health(lambda: serving[0])
        seen: list[bytes] = []

        async def watch() -> None:
            async for message in health.watch(_request(""), _Context()):
                seen.append(message)

        task = asyncio.create_task(watch())
        await asyncio.sleep(0)
        health.notify()  # nothing changed: no message
        await asyncio.sleep(0)
        serving[0] = True
        health.notify()
        await asyncio.sleep(0)
        health.close()
        await asyncio.wait_for(task, 5)
        return seen

    assert asyncio.run(scenario()) == [b"\x08\x02", b"\x08\x01", b"\x08\x02"]


def test_watch_of_an_unknown_service():
    async def scenario() -> list[bytes]:
        health = Health(lambda: True)
        stream = health.watch(_request("nope"), _Context())
        first = await anext(stream)
        health.close()
        return [first, *[m async for m in stream]]

    assert asyncio.run(scenario()) == [bytes((0x08, ServingStatus.SERVICE_UNKNOWN))]
