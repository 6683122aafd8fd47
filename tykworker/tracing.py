"""OpenTelemetry setup shared by the front and the workers (the ``tracing`` setting).

Whether tracing is on is decided from the settings and the standard environment, without
importing OpenTelemetry (``enabled``, ``check``): the supervisor calls ``check`` at start
and never imports the SDK, so nothing of it exists before ``fork``. Each front and worker
process calls ``start`` itself, after the fork: the SDK's ``BatchSpanProcessor`` thread and
the exporter's connections belong to that process alone.

Everything else comes from the SDK and its OTLP exporters, which read the standard
``OTEL_*`` variables themselves: ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``/``HEADERS``/
``TIMEOUT``/``COMPRESSION``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER[_ARG]``, ``OTEL_BSP_*``, ``OTEL_PROPAGATORS`` (for what plugin code
sends on). Chosen here: the exporter (``OTEL_TRACES_EXPORTER``: ``otlp``, ``console`` or
``none``) and its protocol (``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``: ``grpc`` or
``http/protobuf``, the default).

Extraction of the gateway's context always accepts W3C trace context (and baggage) and B3
(single ``b3`` or ``x-b3-*``), whatever ``OTEL_PROPAGATORS`` says: the gateway sends one of
them (its ``context_propagation``), and W3C wins when both are present.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from tykworker.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

ENDPOINT_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOLS: Final = ("grpc", "http/protobuf")
EXPORTERS: Final = ("otlp", "console", "none")
#: The modules each protocol needs (the ``tracing`` extra installs them all).
_NEEDS: Final = {
    "grpc": ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.grpc"),
    "http/protobuf": ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"),
    "console": ("opentelemetry.sdk",),
}
_B3: Final = "opentelemetry.propagators.b3"


def enabled(setting: str, environ: Mapping[str, str]) -> bool:
    """``tracing`` = ``on``/``off``, or ``auto``: on when an OTLP endpoint variable is
    set. ``OTEL_SDK_DISABLED=true`` and ``OTEL_TRACES_EXPORTER=none`` turn it off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if _exporter(environ) == "none" or setting == "off":
        return False
    if setting == "on":
        return True
    return any(environ.get(name) for name in ENDPOINT_VARIABLES)


def _exporter(environ: Mapping[str, str]) -> str:
    return environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"


def protocol(environ: Mapping[str, str]) -> str:
    """The OTLP protocol for traces (the specification's default: http/protobuf)."""
    value = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", ""
    )
    return value.strip().lower() or "http/protobuf"


def check(setting: str, environ: Mapping[str, str]) -> bool:
    """Whether tracing is on; raises ``ConfigError`` when it is requested but cannot work
    (an unknown exporter or protocol, or the SDK is not installed). Imports nothing of
    OpenTelemetry (it runs in the supervisor)."""
    if not enabled(setting, environ):
        return False
    exporter = _exporter(environ)
    if exporter not in EXPORTERS:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={exporter!r}: tykworker supports {', '.join(EXPORTERS)}"
        )
    kind = protocol(environ) if exporter == "otlp" else exporter
    if kind not in _NEEDS:
        raise ConfigError(
            f"OTLP protocol {kind!r} is not supported for traces: use {' or '.join(PROTOCOLS)}"
        )
    missing = [name for name in (*_NEEDS[kind], _B3) if not _installed(name)]
    if missing:
        raise ConfigError(
            f"tracing is on but {', '.join(missing)} is not installed: "
            "pip install 'tykworker[tracing]' (or set tracing = \"off\")"
        )
    return True


def describe(environ: Mapping[str, str]) -> str:
    """Where spans go, for the start-up log line."""
    if _exporter(environ) == "console":
        return "console exporter (standard output)"
    endpoint = next((environ[n] for n in ENDPOINT_VARIABLES if environ.get(n)), "the default")
    return f"over {protocol(environ)} to {endpoint}"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing or fails to import
        return False


def start(role: str, environ: Mapping[str, str] | None = None) -> TracerProvider:
    """This process's tracer provider, exporting in the background (a
    ``BatchSpanProcessor``), installed as the global one so that plugin code's
    ``opentelemetry.trace.get_tracer()`` uses it. Call once per process, after fork."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    environ = os.environ if environ is None else environ
    resource = Resource.create({"tykworker.role": role, "process.pid": os.getpid()})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "tykworker"}))
    # shutdown_on_exit: these processes leave by os._exit; ``stop`` flushes instead.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(_make_exporter(environ)))
    trace.set_tracer_provider(provider)
    return provider


def _make_exporter(environ: Mapping[str, str]) -> SpanExporter:
    if _exporter(environ) == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if protocol(environ) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPSpanExporter,
    )

    return HTTPSpanExporter()


def stop(provider: TracerProvider, timeout: float = 5.0) -> None:
    """Export what is still buffered (bounded by ``timeout``), then stop the thread."""
    provider.force_flush(int(timeout * 1000))
    provider.shutdown()


def extract(headers: Mapping[str, str]) -> Context:
    """The gateway's context from its propagation headers (B3, then W3C, which wins)."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.b3 import B3MultiFormat
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    global _EXTRACTORS
    if _EXTRACTORS is None:
        _EXTRACTORS = (B3MultiFormat(), TraceContextTextMapPropagator(), W3CBaggagePropagator())
    context: Context | None = None
    for propagator in _EXTRACTORS:
        context = propagator.extract(headers, context)
    assert context is not None
    return context


_EXTRACTORS: tuple[TextMapPropagator, ...] | None = None


def wall_ns(monotonic: float, now_monotonic: float | None = None) -> int:
    """Epoch nanoseconds of an instant of CLOCK_MONOTONIC (one clock for every process of
    the host: the front's instants are placed on the worker's timeline with it)."""
    now = time.monotonic() if now_monotonic is None else now_monotonic
    return time.time_ns() - int((now - monotonic) * 1e9)
