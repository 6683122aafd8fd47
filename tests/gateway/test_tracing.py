"""One trace through the real gateway and tykworker: the gateway's ``opentelemetry`` block
exports to a test-run OTLP receiver (tests/otlp.py), and so does tykworker; each hook's span
is a child of the gateway's client span of that gRPC call, in the request's trace (the test
sends the request with its own trace context, so the trace id is known). W3C trace context
and B3 (module-scoped stacks, one per ``context_propagation``).

Gateway keys (TykTechnologies/opentelemetry config, as read by the gateway):
``opentelemetry.enabled``, ``exporter`` (``grpc``/``http``), ``endpoint``,
``context_propagation`` (``tracecontext``/``b3``), ``span_processor_type``
(``simple`` exports each span at its end).
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import otlp
from tests.gateway.harness import Gateway, Upstream, api, gateway_conf, http
from tests.integration.conftest import ROOT, Server, wait_for

pytestmark = pytest.mark.gateway

HERE = Path(__file__).parent
HOOKS = {
    "pre": "GwPre",
    "auth": "GwAuth",
    "post_key_auth": "GwPostKeyAuth",
    "post": "GwPost",
    "response": "GwResponse",
}
TRACED = api(
    "traced",
    "/traced/",
    "",
    use_keyless=False,
    custom_plugin_auth_enabled=True,
    custom_middleware={
        "driver": "grpc",
        "pre": [{"name": "GwPre"}],
        "auth_check": {"name": "GwAuth"},
        "post_key_auth": [{"name": "GwPostKeyAuth"}],
        "post": [{"name": "GwPost"}],
        "response": [{"name": "GwResponse"}],
    },
    event_handlers={
        "events": {
            "AuthFailure": [
                {"handler_name": "cp_dynamic_handler", "handler_meta": {"name": "gw_auth_failure"}}
            ]
        }
    },
)


def readme_block() -> dict[str, Any]:
    """The gateway block of the README's Tracing section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Tracing (OpenTelemetry)") :]
    section = section[: section.index("\n## ", 1)]
    [block] = re.findall(r"```json\n(.*?)```", section, re.S)
    found: dict[str, Any] = json.loads(block)
    return found


class TracedStack:
    """A receiver, tykworker exporting to it over gRPC, and a gateway exporting to it with
    ``propagation``."""

    def __init__(
        self, folder: Path, binary: str, redis_url: str, upstream: Upstream, propagation: str
    ) -> None:
        self.upstream = upstream
        self.propagation = propagation
        self._receiver = otlp.receiver()
        self.receiver = self._receiver.__enter__()
        events_file = folder / "events.jsonl"
        events_file.touch()
        for name in ("plugins", "events"):
            shutil.copytree(HERE / name, folder / name)
        args = ["--middleware", str(folder / "plugins"), "--event-handlers", str(folder / "events")]
        env = {
            "GW_EVENTS_FILE": str(events_file),
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.receiver.grpc_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        self.server = Server(folder, [*args, "--workers", "2"], env).wait_ready()
        (folder / "gw").mkdir()
        conf = gateway_conf(folder / "gw", self.server.socket, redis_url, upstream.url + "/")
        conf["opentelemetry"] = {
            **readme_block()["opentelemetry"],  # the README's, pointed at the receiver
            "endpoint": f"127.0.0.1:{self.receiver.grpc_port}",
            "context_propagation": propagation,
            "span_processor_type": "simple",  # each span exported when it ends
        }
        self.gateway = Gateway(binary, folder / "gw", conf).wait_up()
        TRACED["proxy"]["target_url"] = upstream.url + "/up/"
        self.gateway.put_apis(TRACED)

    def stop(self) -> None:
        self.gateway.stop()
        self.server.stop()
        self._receiver.__exit__(None, None, None)


@pytest.fixture(scope="module", params=["tracecontext", "b3"])
def traced(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    gateway_binary: str,
    redis_url: str,
    upstream: Upstream,
) -> Iterator[TracedStack]:
    folder = tmp_path_factory.mktemp(f"tw-otel-{request.param}")
    stack = TracedStack(folder, gateway_binary, redis_url, upstream, request.param)
    yield stack
    stack.stop()


def _ours(span: otlp.Span) -> bool:
    return "tykworker.role" in span.resource


def _incoming(traced: TracedStack) -> tuple[str, dict[str, str]]:
    """A new trace id, and the header that makes the gateway continue it (its format)."""
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    if traced.propagation == "b3":
        return trace_id, {"b3": f"{trace_id}-{parent}-1"}
    return trace_id, {"traceparent": f"00-{trace_id}-{parent}-01"}


def test_one_trace_holds_the_gateways_spans_and_every_hooks_span(traced):
    trace_id, context = _incoming(traced)
    key = f"good-{uuid.uuid4().hex}"
    answer = http(traced.gateway.url + "/traced/x", headers={"Authorization": key, **context})
    assert answer.status == 200, answer
    spans = traced.receiver.wait(lambda s: s.trace_id == trace_id and _ours(s), count=5)
    assert {s.attributes["tykworker.hook.type"]: s.name for s in spans} == HOOKS
    for span in spans:
        assert span.attributes["tyk.api.id"] == "traced"
        assert span.attributes["tykworker.outcome"] == "ok"
        assert span.attributes["tykworker.worker.pid"] in traced.server.worker_pids()

    def parents() -> list[otlp.Span]:
        ids = {s.parent_span_id for s in spans}
        return [g for g in traced.receiver.in_trace(trace_id) if g.span_id in ids]

    # Each hook span's parent is the gateway's span of that gRPC call (its client span).
    found = wait_for(lambda: len(found := parents()) == 5 and found, what="the parents")
    assert {(g.service, g.name, g.kind) for g in found} == {
        ("tyk-gateway", "coprocess.Dispatcher/Dispatch", 3)  # SPAN_KIND_CLIENT
    }
    # The gateway used the propagation configured (it propagates to the upstream alike).
    seen = traced.upstream.last("/up/x").headers
    if traced.propagation == "b3":
        assert "b3" in seen and "traceparent" not in seen
    else:
        assert "traceparent" in seen and "b3" not in seen


def test_a_refused_key_traces_the_auth_hook_and_its_event(traced):
    trace_id, context = _incoming(traced)
    answer = http(traced.gateway.url + "/traced/x", headers={"Authorization": "bad", **context})
    assert answer.status == 403
    [auth] = traced.receiver.wait(lambda s: s.trace_id == trace_id and s.name == "GwAuth")
    assert auth.attributes["tykworker.outcome"] == "ok"  # the hook answered (a refusal)
    # The gateway sends DispatchEvent outside the request's trace: its client span for that
    # call is a root of its own, and the handler's span is that span's child.
    [event] = traced.receiver.wait(lambda s: _ours(s) and s.name == "gw_auth_failure")
    assert event.attributes["tykworker.hook.type"] == "event"
    assert event.attributes["tyk.api.id"] == "traced"
    [parent] = traced.receiver.wait(lambda s: s.span_id == event.parent_span_id)
    assert (parent.trace_id, parent.service) == (event.trace_id, "tyk-gateway")
    assert parent.name == "coprocess.Dispatcher/DispatchEvent"
