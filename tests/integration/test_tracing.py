"""OpenTelemetry spans per call, against the real server and a test-run OTLP receiver
(tests/otlp.py: gRPC TraceService and http/protobuf).

A gRPC client plays the gateway: it sends a trace context in the call's metadata
(``traceparent`` or B3) and the tests read what tykworker exported: its span is a child of
the caller's span, in the same trace, with the hook's attributes; plugin spans and httpx
calls made inside the hook are children of it; a call the front answers (timeout) gets a
span with that outcome from the front.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests import otlp
from tests.integration.conftest import Server, busy_with, make_object, wait_for
from tykworker._proto import coprocess_object_pb2 as object_pb2

HERE = Path(__file__).resolve().parent
PLUGINS = HERE / "traced_plugins"
EVENTS = HERE / "traced_events"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def receiver() -> Iterator[otlp.Receiver]:
    with otlp.receiver() as found:
        yield found


def _env(receiver: otlp.Receiver, protocol: str) -> dict[str, str]:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # export within 50 ms (the default is 5 s)
        "OTEL_SERVICE_NAME": "tykworker-test",
    }


def _start(
    start_server: Callable[..., Server], receiver: otlp.Receiver, protocol: str, *args: str
) -> Server:
    return start_server(*args, plugins=PLUGINS, events=EVENTS, env=_env(receiver, protocol))


def _call(server: Server, method: str, payload: bytes, metadata: list[tuple[str, str]]) -> bytes:
    call = server.channel.unary_unary(f"/coprocess.Dispatcher/{method}", None, None)
    return call(payload, timeout=30, metadata=tuple(metadata))  # type: ignore[no-any-return]


def _dispatch(
    server: Server, hook: str, metadata: list[tuple[str, str]], **kw: Any
) -> object_pb2.Object:
    payload = make_object(hook, **kw).SerializeToString()
    return object_pb2.Object.FromString(_call(server, "Dispatch", payload, metadata))


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_call_span_is_the_child_of_the_callers_span(start_server, receiver, protocol):
    server = _start(start_server, receiver, protocol, "--workers", "1")
    reply = _dispatch(server, "Traced", [("traceparent", TRACEPARENT)], hook_type="post")
    pid = int(reply.request.set_headers["X-Worker-Pid"])
    [span] = receiver.wait(lambda s: s.name == "Traced")
    assert (span.trace_id, span.parent_span_id) == (TRACE_ID, PARENT_ID)
    assert span.via == ("grpc" if protocol == "grpc" else "http")
    assert span.service == "tykworker-test"
    assert span.kind == 2  # SPAN_KIND_SERVER
    attributes = span.attributes
    assert attributes["tykworker.hook.name"] == "Traced"
    assert attributes["tykworker.hook.type"] == "post"
    assert attributes["tyk.api.id"] == "api1"
    assert attributes["tykworker.worker.pid"] == pid
    assert attributes["tykworker.generation"] == 1
    assert attributes["tykworker.outcome"] == "ok"
    assert attributes["tykworker.queue_wait_s"] >= 0
    assert span.start_ns <= span.end_ns
    # The plugin's own span (opentelemetry.trace.get_tracer) is the call span's child.
    [child] = receiver.wait(lambda s: s.name == "plugin work")
    assert (child.trace_id, child.parent_span_id) == (TRACE_ID, span.span_id)
    assert child.attributes["plugin.attr"] == "yes"


def test_an_async_hooks_span_lasts_until_the_hook_returns(start_server, receiver):
    """An async hook runs as a task after the frame was handled: its span ends when the
    task does (not when the task was started), and the hook's own span is its child."""
    server = _start(start_server, receiver, "grpc", "--workers", "1")
    _dispatch(server, "TracedAsync", [("traceparent", TRACEPARENT)], headers={"Sleep": "0.2"})
    [span] = receiver.wait(lambda s: s.name == "TracedAsync")
    assert (span.trace_id, span.parent_span_id) == (TRACE_ID, PARENT_ID)
    assert span.attributes["tykworker.outcome"] == "ok"
    assert span.end_ns - span.start_ns >= 200_000_000  # the hook's 0.2 s await is inside
    [child] = receiver.wait(lambda s: s.name == "async plugin work")
    assert (child.trace_id, child.parent_span_id) == (TRACE_ID, span.span_id)


def test_a_call_without_a_trace_context_makes_no_span(start_server, receiver):
    server = _start(start_server, receiver, "grpc", "--workers", "1")
    _dispatch(server, "Traced", [])
    _dispatch(server, "Traced", [("traceparent", TRACEPARENT)])
    receiver.wait(lambda s: s.name == "Traced")
    # The plugin span of the untraced call is a root of its own trace (no parent); the
    # untraced call itself made no span of tykworker's.
    assert {s.trace_id for s in receiver.matching(lambda s: s.name == "Traced")} == {TRACE_ID}


def test_b3_headers_and_events(start_server, receiver):
    server = _start(start_server, receiver, "http/protobuf", "--workers", "1")
    b3_trace, b3_parent = "a" * 32, "b" * 16
    multi = [("x-b3-traceid", b3_trace), ("x-b3-spanid", b3_parent), ("x-b3-sampled", "1")]
    _dispatch(server, "Traced", multi)
    [span] = receiver.wait(lambda s: s.name == "Traced")
    assert (span.trace_id, span.parent_span_id) == (b3_trace, b3_parent)
    event = json.dumps({"handler_name": "TracedEvent", "message": {"Type": "AuthFailure"}})
    payload = object_pb2.Event(payload=event).SerializeToString()
    single = [("b3", f"{'c' * 32}-{'d' * 16}-1")]
    assert _call(server, "DispatchEvent", payload, single) == b""
    [span] = receiver.wait(lambda s: s.name == "TracedEvent")
    assert (span.trace_id, span.parent_span_id) == ("c" * 32, "d" * 16)
    assert span.attributes["tykworker.hook.type"] == "event"
    assert span.attributes["tykworker.outcome"] == "ok"


def test_a_failing_hook_has_an_error_span(start_server, receiver):
    server = _start(start_server, receiver, "grpc", "--workers", "1")
    _dispatch(server, "Raise", [("traceparent", TRACEPARENT)])
    [span] = receiver.wait(lambda s: s.name == "Raise")
    assert span.attributes["tykworker.outcome"] == "hook_error"
    assert span.status_code == 2  # STATUS_CODE_ERROR


def test_a_timed_out_call_gets_its_span_from_the_front(start_server, receiver):
    server = _start(start_server, receiver, "grpc", "--workers", "1", "--hook-timeout", "0.5")
    reply = _dispatch(server, "Hang", [("traceparent", TRACEPARENT)])
    assert reply.request.return_overrides.response_code == 504
    [span] = receiver.wait(lambda s: s.name == "Hang")
    assert (span.trace_id, span.parent_span_id) == (TRACE_ID, PARENT_ID)
    assert span.resource["tykworker.role"] == "front"
    assert span.attributes["tykworker.outcome"] == "timeout"
    assert span.attributes["tykworker.hook.type"] == "pre"
    assert span.status_code == 2
    assert span.end_ns - span.start_ns >= 0.5e9  # it lasted until the deadline


def test_a_crashed_call_gets_its_span_from_the_front(start_server, receiver):
    server = _start(start_server, receiver, "http/protobuf", "--workers", "1")
    [pid] = server.worker_pids()
    reply = _dispatch(server, "Crash", [("traceparent", TRACEPARENT)], hook_type="post")
    assert reply.request.return_overrides.response_code == 502
    [span] = receiver.wait(lambda s: s.name == "Crash")
    assert (span.trace_id, span.parent_span_id) == (TRACE_ID, PARENT_ID)
    assert span.resource["tykworker.role"] == "front"
    assert span.attributes["tykworker.outcome"] == "crash"
    assert span.attributes["tykworker.worker.pid"] == pid
    assert span.attributes["tykworker.generation"] == 1
    assert "tyk.api.id" not in span.attributes  # the front never parses the Object


def test_an_overloaded_call_gets_its_span_from_the_front(start_server, receiver):
    args = ("--workers", "1", "--queue-size", "0", "--hook-timeout", "2", "--graceful-timeout", "2")
    server = _start(start_server, receiver, "grpc", *args)
    method = server.channel.unary_unary("/coprocess.Dispatcher/Dispatch", None, None)
    held = method.future(make_object("Hang").SerializeToString(), timeout=30)
    wait_for(lambda: busy_with(server, "Hang"), what="the worker holding Hang")
    reply = _dispatch(server, "Traced", [("traceparent", TRACEPARENT)])
    assert reply.request.return_overrides.response_code == 503
    [span] = receiver.wait(lambda s: s.name == "Traced")
    assert span.attributes["tykworker.outcome"] == "overload"
    assert "tykworker.worker.pid" not in span.attributes  # no worker ever held it
    assert span.parent_span_id == PARENT_ID
    held.cancel()


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        _Recorder.seen.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_httpx_calls_inside_a_hook_join_the_trace(start_server, receiver):
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        server = _start(start_server, receiver, "grpc", "--workers", "1")
        url = f"http://127.0.0.1:{upstream.server_address[1]}/x"
        _dispatch(server, "Traced", [("traceparent", TRACEPARENT)], headers={"Upstream": url})
        [child] = receiver.wait(lambda s: s.name == "plugin work")
        [client] = receiver.wait(lambda s: s.kind == 3)  # SPAN_KIND_CLIENT: httpx's
        assert (client.trace_id, client.parent_span_id) == (TRACE_ID, child.span_id)
        [headers] = _Recorder.seen
        assert headers["traceparent"].split("-")[1:3] == [TRACE_ID, client.span_id]
    finally:
        upstream.shutdown()
        upstream.server_close()


def test_tracing_off_serves_traced_calls_as_before(start_server, receiver):
    env = {**_env(receiver, "grpc"), "TYKWORKER_TRACING": "off"}
    server = start_server("--workers", "1", plugins=PLUGINS, events=EVENTS, env=env)
    reply = _dispatch(server, "Traced", [("traceparent", TRACEPARENT)])
    assert reply.request.set_headers["X-Worker-Pid"]


def _without_opentelemetry(workdir: Path) -> dict[str, str]:
    """An environment in which ``import opentelemetry`` fails, as without the extra."""
    blocker = workdir / "no-otel" / "opentelemetry"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('opentelemetry blocked by the test')\n")
    path = [str(blocker.parent), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(filter(None, path))}


def test_without_the_sdk_tracing_off_serves_and_tracing_on_is_a_clear_error(
    start_server, workdir, receiver
):
    env = _without_opentelemetry(workdir)
    server = start_server("--workers", "1", plugins=HERE / "plugins", env=env)
    reply = server.dispatch("Echo")
    assert reply.request.set_headers["X-Version"] == "1"
    other = workdir / "other.sock"
    failed = subprocess.run(
        [sys.executable, "-m", "tykworker", "serve", "--socket", str(other), "--tracing", "on"],
        cwd=workdir,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode != 0
    assert "tracing is on but opentelemetry.sdk" in failed.stderr
    assert "pip install 'tykworker[tracing]'" in failed.stderr
    assert not other.exists()


def test_the_sdk_runs_in_each_worker_and_the_front_never_in_the_supervisor(start_server, receiver):
    server = _start(start_server, receiver, "grpc", "--workers", "2")
    _dispatch(server, "Traced", [("traceparent", TRACEPARENT)])
    receiver.wait(lambda s: s.name == "Traced")
    supervisor = psutil.Process(server.proc.pid)
    assert supervisor.num_threads() == 1  # no export thread was ever started there
    for pid in server.worker_pids():  # each worker started its own (BatchSpanProcessor)
        assert psutil.Process(pid).num_threads() >= 2
    spans = receiver.matching(lambda s: True)
    assert {s.resource["process.pid"] for s in spans} <= server.worker_pids()
