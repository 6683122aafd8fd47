"""Pure parts of the metrics endpoint: statistics, exposition, the tiny HTTP responder."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tykworker.config import load_settings, metrics_address
from tykworker.errors import ConfigError
from tykworker.front import metrics
from tykworker.front.metrics import CallStats, FrontCollector, Histogram, Snapshot


def _snapshot(**kw: object) -> Snapshot:
    base: dict[str, object] = {
        "workers": {"busy": 1, "idle": 2, "draining": 0, "lost": 0},
        "queue_depth": 3,
        "in_flight": 4,
        "serving": True,
        "generation": 2,
        "target_workers": 3,
        "degraded": False,
        "restarts": 5,
        "import_failures": 2,
        "reloads": 1,
        "reload_failures": 1,
    }
    return Snapshot(**{**base, **kw})  # type: ignore[arg-type]


Labels = tuple[tuple[str, str], ...]  # a sample's labels, sorted


def _scrape(stats: CallStats, snap: Snapshot | None = None) -> dict[str, dict[Labels, float]]:
    """name -> {sorted label items: value}, parsed with prometheus_client's own parser."""
    registry = metrics.make_registry(FrontCollector(stats, lambda: snap or _snapshot()))
    body, content_type = metrics.render(registry, "")
    assert content_type.startswith("text/plain")
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_histogram_buckets_are_le_and_cumulative():
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        hist.observe(value)
    assert hist.counts == [2, 2, 1]  # a value equal to a bound is in that bucket
    assert hist.cumulative() == [("0.1", 2.0), ("1.0", 4.0), ("+Inf", 5.0)]
    assert hist.total == pytest.approx(8.65)


def test_calls_latency_answers_and_queue_wait_are_exported():
    stats = CallStats()
    for seconds in (0.001, 0.002, 0.2):
        stats.observe_call("pre", "Echo", seconds)
    stats.observe_call("response", "Echo", 0.001)
    stats.observe_answer("pre", "Echo", "timeout")
    stats.observe_answer("pre", "Echo", "timeout")
    stats.observe_answer("auth", "Check", "hook_error")
    stats.observe_queue_wait(0.0)
    samples = _scrape(stats)
    echo = (("hook", "Echo"), ("type", "pre"))
    assert samples["tykworker_calls_total"][echo] == 3
    assert samples["tykworker_calls_total"][(("hook", "Echo"), ("type", "response"))] == 1
    assert samples["tykworker_call_duration_seconds_count"][echo] == 3
    assert samples["tykworker_call_duration_seconds_sum"][echo] == pytest.approx(0.203)
    buckets = samples["tykworker_call_duration_seconds_bucket"]
    assert buckets[(("hook", "Echo"), ("le", "0.0025"), ("type", "pre"))] == 2
    answers = samples["tykworker_answers_total"]
    assert answers[(("hook", "Echo"), ("reason", "timeout"), ("type", "pre"))] == 2
    assert answers[(("hook", "Check"), ("reason", "hook_error"), ("type", "auth"))] == 1
    assert samples["tykworker_queue_wait_seconds_count"][()] == 1


def test_server_gauges_and_supervisor_counters():
    samples = _scrape(CallStats(), _snapshot(degraded=True, serving=False))
    assert samples["tykworker_workers"][(("state", "idle"),)] == 2
    assert samples["tykworker_workers"][(("state", "busy"),)] == 1
    assert samples["tykworker_queue_depth"][()] == 3
    assert samples["tykworker_calls_in_flight"][()] == 4
    assert samples["tykworker_serving"][()] == 0
    assert samples["tykworker_degraded"][()] == 1
    assert samples["tykworker_generation"][()] == 2
    assert samples["tykworker_worker_restarts_total"][()] == 5
    assert samples["tykworker_worker_import_failures_total"][()] == 2
    assert samples["tykworker_reloads_total"][(("outcome", "failed"),)] == 1


def test_hook_label_sets_are_bounded(monkeypatch):
    monkeypatch.setattr(metrics, "MAX_SERIES", 2)
    stats = CallStats()
    for name in ("a", "b", "c", "d"):
        stats.observe_call("pre", name, 0.001)
        stats.observe_answer("pre", name, "crash")
    assert sorted(stats.durations) == [("pre", "a"), ("pre", "b"), ("pre", metrics.OTHER)]
    assert stats.answers[("pre", metrics.OTHER, "crash")] == 2
    assert sum(stats.durations[("pre", metrics.OTHER)].counts) == 2


def test_worker_states():
    states = metrics.worker_states(
        [(True, False, False), (False, False, False), (True, True, False), (False, False, True)]
    )
    assert states == {"busy": 1, "idle": 1, "draining": 1, "lost": 1}


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x", 200),
        (b"GET /metrics?x=1 HTTP/1.0", 200),
        (b"HEAD /metrics HTTP/1.1", 200),
        (b"GET /other HTTP/1.1", 404),
        (b"POST /metrics HTTP/1.1", 405),
        (b"garbage", 400),
    ],
)
def test_http_responses(head, status):
    registry = metrics.make_registry(FrontCollector(CallStats(), _snapshot))
    response = metrics.respond(registry, head)
    first, _, rest = response.partition(b"\r\n")
    assert first.startswith(f"HTTP/1.1 {status} ".encode())
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"Connection: close" in headers
    if status == 200:
        length = int(headers.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert len(body) == (0 if head.startswith(b"HEAD") else length) and length > 0


def test_openmetrics_is_served_when_asked():
    registry = metrics.make_registry(FrontCollector(CallStats(), _snapshot))
    head = b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0"
    response = metrics.respond(registry, head)
    assert b"Content-Type: application/openmetrics-text" in response
    assert response.endswith(b"# EOF\n")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:9464", ("tcp", "127.0.0.1", 9464)),
        (":9464", ("tcp", "", 9464)),
        ("tcp://[::1]:9100", ("tcp", "::1", 9100)),
        ("/run/tykworker/metrics.sock", ("unix", "/run/tykworker/metrics.sock", 0)),
        ("unix://metrics.sock", ("unix", "metrics.sock", 0)),
        ("localhost", None),
        ("host:0", None),
        ("host:http", None),
    ],
)
def test_metrics_address(text, parsed):
    assert metrics_address(text) == parsed


def test_new_settings_are_validated():
    assert load_settings({"metrics": "127.0.0.1:9464"}, {}).metrics == "127.0.0.1:9464"
    assert load_settings({}, {"TYKWORKER_SLOW_CALL_THRESHOLD": "0.5"}).slow_call_threshold == 0.5
    with pytest.raises(ConfigError, match="metrics"):
        load_settings({"metrics": "nowhere"}, {})
    with pytest.raises(ConfigError, match="slow_call_threshold"):
        load_settings({"slow_call_threshold": "-1"}, {})
