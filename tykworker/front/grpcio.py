"""The reference gRPC server (``front = "grpcio"``): grpcio's asyncio server with generic
raw-bytes handlers, so Object bytes pass through unparsed.

Imported only by the front process, and only when this front is chosen: the supervisor
never imports grpc (grpcio cannot survive ``fork`` once gRPC objects exist).

Bounds (``options``): the native front's where grpcio has a channel argument for them:
message sizes, streams per connection, header list sizes, the connection cap, the preface
(handshake) and idle timeouts. grpcio has none for a body left incomplete, nor a byte
budget settable from Python (its resource quota is a C object): README says so.

grpcio cannot serve a listening socket it did not bind (Python has no API to adopt a
descriptor), so this front binds its Unix socket itself: while it is down (a crash, until
the supervisor's next fork has bound again) new connections are refused.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from tykworker import tracing
from tykworker.config import Settings, parse_address
from tykworker.front.guard import Guard
from tykworker.front.h2.state import Limits
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


def options(settings: Settings, cap: int) -> list[tuple[str, int]]:
    """grpcio's channel arguments for ``settings``, with at most ``cap`` connections (the
    front's ``Guard`` cap: ``max_connections`` or the descriptor limit minus the bridge's
    reserve). Same values as the native front's (``h2.state.Limits``): a message over
    ``max_message_mb`` gets RESOURCE_EXHAUSTED, a header list over 64 KiB too, a connection
    without its preface and SETTINGS after ``preface_timeout`` is closed, one without calls
    for ``idle_timeout`` gets GOAWAY."""
    limits = Limits()
    values = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", limits.max_streams),
        # Soft = hard: between the two grpcio refuses at random; the native front refuses
        # every header list over its soft limit (its hard one only ends the connection).
        ("grpc.max_metadata_size", limits.max_header_list),
        ("grpc.absolute_max_metadata_size", limits.max_header_list),
        ("grpc.max_allowed_incoming_connections", cap),
        ("grpc.server_handshake_timeout_ms", round(settings.preface_timeout * 1000)),
        ("grpc.so_reuseport", 0),
    ]
    if settings.idle_timeout:
        values.append(("grpc.max_connection_idle_ms", round(settings.idle_timeout * 1000)))
    return values


async def start_grpcio(call: Call, settings: Settings, health: Health) -> tuple[Any, list[str]]:
    """A started ``grpc.aio.Server`` on ``settings.socket`` and the Unix paths it created.
    Unix sockets get ``socket_mode`` from the start (umask around the bind) and the group."""
    guard = Guard.shared(settings)  # the cap (shared with the raw socket's connections)
    server = grpc.aio.server(options=options(settings, guard.cap))
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
