"""A test-run OTLP trace receiver: what an OpenTelemetry collector would get.

``Receiver`` listens for ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` over
gRPC (grpcio server) and for ``POST /v1/traces`` with ``application/x-protobuf`` over HTTP
(http/protobuf), both on 127.0.0.1, and keeps every span it receives as a ``Span`` (ids in
hex, attributes as plain values, the exporting resource's ``service.name``). Thread-safe;
tests wait for spans with ``wait_for`` (conditions, never sleeps).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from tests.integration.conftest import wait_for


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    service: str
    resource: dict[str, Any]
    start_ns: int
    end_ns: int
    status_code: int
    via: str  # "grpc" or "http"


def _value(value: common_pb2.AnyValue) -> Any:
    which = value.WhichOneof("value")
    return getattr(value, which) if which else None


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


@dataclass
class Receiver:
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    grpc_port: int = 0
    http_port: int = 0

    def take(self, request: trace_service_pb2.ExportTraceServiceRequest, via: str) -> None:
        found = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    found.append(
                        Span(
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.kind,
                            _attributes(span.attributes),
                            str(resource.get("service.name", "")),
                            resource,
                            span.start_time_unix_nano,
                            span.end_time_unix_nano,
                            span.status.code,
                            via,
                        )
                    )
        with self.lock:
            self.spans.extend(found)

    def matching(self, predicate: Callable[[Span], bool]) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if predicate(s)]

    def wait(
        self, predicate: Callable[[Span], bool], count: int = 1, timeout: float = 30.0
    ) -> list[Span]:
        """At least ``count`` spans matching ``predicate`` (waits for them)."""
        return wait_for(  # type: ignore[no-any-return]
            lambda: (found := self.matching(predicate)) and len(found) >= count and found,
            timeout,
            f"{count} span(s) at the OTLP receiver; got {self.spans}",
        )

    def in_trace(self, trace_id: str) -> list[Span]:
        return self.matching(lambda s: s.trace_id == trace_id)

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


class _Service(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        self.receiver.take(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


def _http_handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path != "/v1/traces":
                self._answer(404, b"")
                return
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            receiver.take(request, "http")
            self._answer(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def receiver() -> Iterator[Receiver]:
    """A running receiver (gRPC and HTTP), stopped on exit."""
    found = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Service(found), server)
    found.grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    http = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(found))
    http.daemon_threads = True
    found.http_port = http.server_address[1]
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        yield found
    finally:
        http.shutdown()
        http.server_close()
        server.stop(0)
