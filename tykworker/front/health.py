"""gRPC health service (``grpc.health.v1.Health``) on the front's gRPC socket.

Status, for the services ``""`` (the whole server) and ``"coprocess.Dispatcher"``:
SERVING while the front accepts calls (it is not draining) and at least one worker of the
current generation, or of a newer one, is connected and not draining or lost (a worker
connects once its plugins are imported; workers of a reload in progress already take
calls, so they count). NOT_SERVING otherwise: at start until the first worker is ready,
when every worker is gone, and from the moment a drain starts (after which the gRPC server
itself refuses new calls with UNAVAILABLE).

* ``Check``: the status now; an unknown service name gets gRPC ``NOT_FOUND``.
* ``Watch``: the status now, then every change (``notify`` is called by the front whenever
  a worker joins, leaves, drains or is lost, and when it starts draining); unknown
  services get ``SERVICE_UNKNOWN``. On drain each stream gets ``NOT_SERVING`` and ends, so
  open watches never hold up a graceful stop.

The two messages are tiny (``HealthCheckRequest{string service = 1}``,
``HealthCheckResponse{ServingStatus status = 1}``), so they are encoded here by hand; no
generated code and no descriptor that could clash with ``grpcio-health-checking``.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable
from typing import Final

SERVICE: Final = "grpc.health.v1.Health"
SERVICES: Final = frozenset({"", "coprocess.Dispatcher"})


class ServingStatus(enum.IntEnum):
    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3  # Watch only


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return result, pos


def decode_request(data: bytes) -> str:
    """``HealthCheckRequest.service``; unknown fields are skipped. ValueError if malformed."""
    service, pos = "", 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            if key >> 3 == 1:
                service = data[pos : pos + length].decode("utf-8")
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != len(data):
        raise ValueError("truncated fixed-width field")
    return service


def encode_response(status: ServingStatus) -> bytes:
    """``HealthCheckResponse{status}`` (proto3: the default 0 is not written)."""
    return bytes((0x08, int(status))) if status else b""


class Health:
    """The health service of one front. ``probe()`` says whether it is SERVING now."""

    def __init__(self, probe: Callable[[], bool]) -> None:
        self.probe = probe
        self.closing = False
        self._changed = asyncio.Event()

    def status(self, service: str) -> ServingStatus:
        if service not in SERVICES:
            return ServingStatus.SERVICE_UNKNOWN
        serving = not self.closing and self.probe()
        return ServingStatus.SERVING if serving else ServingStatus.NOT_SERVING

    def notify(self) -> None:
        """Something the status depends on changed: wake every Watch."""
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """The front is draining: NOT_SERVING from now on, and Watch streams end."""
        self.closing = True
        self.notify()

    async def watch(self, request: bytes, context: object = None) -> AsyncIterator[bytes]:
        """Every status change of the requested service, until the front drains."""
        service = service_of(request)
        last: ServingStatus | None = None
        while True:
            changed = self._changed  # before reading the status: no missed wake-up
            status = self.status(service)
            if status != last:
                yield encode_response(status)
                last = status
            if self.closing:
                return
            await changed.wait()


def service_of(request: bytes) -> str:
    """The service a HealthCheckRequest names (an invalid request names none)."""
    try:
        return decode_request(request)
    except (ValueError, UnicodeDecodeError):
        return "\0invalid"  # matches no service
