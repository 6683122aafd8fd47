"""The reference gRPC server (``front = "grpcio"``): grpcio's asyncio server with generic
raw-bytes handlers, so Object bytes pass through unparsed.

Imported only by the front process, and only when this front is chosen: the supervisor
never imports grpc (grpcio cannot survive ``fork`` once gRPC objects exist).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from tykworker import tracing
from tykworker.config import Settings, parse_address
from tykworker.front.health import SERVICE as HEALTH_SERVICE
from tykworker.front.health import Health, ServingStatus, encode_response, service_of
from tykworker.system import sockets
from tykworker.wire import tracecontext
from tykworker.wire.frames import FrameKind, Payload

SERVICE = "coprocess.Dispatcher"
#: call(kind, payload, deadline, trace): ``trace`` is the call's propagation headers
Call = Callable[[FrameKind, Payload, "float | None", "bytes | None"], Awaitable[Payload]]


def _handlers(call: Call, trace: bool = False) -> grpc.GenericRpcHandler[bytes, bytes]:
    """Dispatch and DispatchEvent; with ``trace`` (tracing on), each call's propagation
    headers from its invocation metadata go with it (wire/tracecontext.py)."""

    def unary(kind: FrameKind) -> grpc.RpcMethodHandler[bytes, bytes]:
        async def handle(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            reply = await call(kind, request, context.time_remaining(), None)
            return reply if isinstance(reply, bytes) else bytes(reply)  # grpcio takes bytes

        async def handle_traced(
            request: bytes, context: grpc.aio.ServicerContext[Any, Any]
        ) -> bytes:
            carrier = tracecontext.carrier_of_pairs(context.invocation_metadata() or ())
            reply = await call(kind, request, context.time_remaining(), carrier)
            return reply if isinstance(reply, bytes) else bytes(reply)

        return grpc.unary_unary_rpc_method_handler(handle_traced if trace else handle)

    return grpc.method_handlers_generic_handler(
        SERVICE, {"Dispatch": unary(FrameKind.DISPATCH), "DispatchEvent": unary(FrameKind.EVENT)}
    )


async def check_health(
    health: Health, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> bytes:
    """``grpc.health.v1.Health/Check``: NOT_FOUND for a service it does not know."""
    service = service_of(request)
    status = health.status(service)
    if status is ServingStatus.SERVICE_UNKNOWN:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
    return encode_response(status)


def _health_handlers(health: Health) -> grpc.GenericRpcHandler[bytes, bytes]:
    return grpc.method_handlers_generic_handler(
        HEALTH_SERVICE,
        {
            "Check": grpc.unary_unary_rpc_method_handler(functools.partial(check_health, health)),
            "Watch": grpc.unary_stream_rpc_method_handler(health.watch),
        },
    )


async def start_grpcio(call: Call, settings: Settings, health: Health) -> tuple[Any, list[str]]:
    """A started ``grpc.aio.Server`` on ``settings.socket`` and the Unix paths it created.
    Unix sockets get ``socket_mode`` from the start (umask around the bind) and the group."""
    limit = settings.max_message_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    trace = tracing.enabled(settings.tracing, os.environ)
    server.add_generic_rpc_handlers((_handlers(call, trace), _health_handlers(health)))
    kind, address = parse_address(settings.socket)
    if kind != "unix":
        server.add_insecure_port(address)
        await server.start()
        return server, []
    sockets.claim_unix_path(address)
    old = os.umask(0o777 & ~settings.socket_mode)
    try:
        server.add_insecure_port("unix:" + address)
        await server.start()
    finally:
        os.umask(old)
    os.chmod(address, settings.socket_mode)
    sockets.set_group(address, settings.socket_gid())
    return server, [address]
