"""Prometheus metrics, served by the front (opt-in: the ``metrics`` setting).

The front sees every call, so it is the one registry: no multiprocess mode, no files, and
worker churn cannot lose or rewind a counter (workers keep none; a worker reports a plugin
error to the front with a CONTROL frame before its reply, see worker/loop.py). Server-wide
numbers the supervisor owns (restarts, reloads, generation, degraded) are read from the
scoreboard header at scrape time.

Hot path: ``CallStats.observe_*`` are plain dict and list updates on the front's event loop
(no locks, no prometheus objects per call); ``Collector.collect`` turns them into metric
families only when Prometheus scrapes. ``start_endpoint`` runs a tiny HTTP/1.1 responder on
the same event loop (``GET /metrics``; anything else 404), so the statistics are never read
from another thread.

Invariants:
* Counters only grow for the life of the front (worker restarts and reloads do not touch
  them; only a crash of the front itself starts them again, which Prometheus handles as a
  counter reset); histograms are cumulative.
* Label sets are bounded: at most ``MAX_SERIES`` (hook, type) pairs; later ones are
  counted under ``hook="~other"``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from tykworker.config import metrics_address
from tykworker.front.router import Router
from tykworker.system import sockets
from tykworker.wire.scoreboard import HeaderView

#: Call latency buckets, seconds (hooks are expected to take milliseconds).
CALL_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip
MAX_SERIES: Final = 1000
OTHER: Final = "~other"
_MAX_REQUEST_HEAD: Final = 8192


@dataclass(slots=True)
class Histogram:
    """Non-cumulative bucket counts; the last bucket is +Inf."""

    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound falls in that bucket (le = "<=").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


@dataclass(slots=True)
class CallStats:
    """What the front measured. Keys are ``(hook_type, hook_name)``."""

    buckets: Sequence[float] = CALL_BUCKETS
    durations: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    answers: dict[tuple[str, str, str], int] = field(default_factory=dict)
    queue_wait: Histogram = field(init=False)

    def __post_init__(self) -> None:
        self.queue_wait = Histogram(self.buckets)

    def observe_call(self, hook_type: str, hook: str, seconds: float) -> None:
        """A call got its answer ``seconds`` after it arrived."""
        series = self.durations.get((hook_type, hook))
        if series is None:
            series = self._series(hook_type, hook)
        series.observe(seconds)

    def observe_answer(self, hook_type: str, hook: str, reason: str) -> None:
        """tykworker or the plugin runtime answered for the hook (``Reason.code``)."""
        if (hook_type, hook) not in self.durations and len(self.durations) >= MAX_SERIES:
            hook = OTHER
        key = (hook_type, hook, reason)
        self.answers[key] = self.answers.get(key, 0) + 1

    def observe_queue_wait(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    def _series(self, hook_type: str, hook: str) -> Histogram:
        if len(self.durations) >= MAX_SERIES:
            hook = OTHER
        return self.durations.setdefault((hook_type, hook), Histogram(self.buckets))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Gauges and supervisor counters at scrape time."""

    workers: dict[str, int]  # state -> count, as the front's router sees them
    queue_depth: int
    in_flight: int
    serving: bool
    generation: int
    target_workers: int
    degraded: bool
    restarts: int
    import_failures: int
    reloads: int
    reload_failures: int
    #: Scoreboard slot -> calls its worker holds (sync and async), connected workers only.
    worker_in_flight: dict[int, int] = field(default_factory=dict)


class FrontCollector(Collector):
    """Renders ``CallStats`` plus a ``Snapshot`` as Prometheus metric families."""

    def __init__(self, stats: CallStats, snapshot: Callable[[], Snapshot]) -> None:
        self.stats = stats
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self._call_metrics()
        yield from self._server_metrics(self.snapshot())

    def _call_metrics(self) -> Iterator[Metric]:
        labels = ["hook", "type"]
        calls = CounterMetricFamily("tykworker_calls", "Calls answered, by hook", labels=labels)
        latency = HistogramMetricFamily(
            "tykworker_call_duration_seconds",
            "Time from a call's arrival at the front to its answer",
            labels=labels,
        )
        for (hook_type, hook), hist in sorted(self.stats.durations.items()):
            calls.add_metric([hook, hook_type], sum(hist.counts))
            latency.add_metric([hook, hook_type], hist.cumulative(), hist.total)
        answers = CounterMetricFamily(
            "tykworker_answers",
            "Calls the hook did not answer itself, by reason (timeout, crash, overload, "
            "unavailable, hook_error, no_hook, bad_request)",
            labels=["hook", "type", "reason"],
        )
        for (hook_type, hook, reason), count in sorted(self.stats.answers.items()):
            answers.add_metric([hook, hook_type, reason], count)
        wait = HistogramMetricFamily(
            "tykworker_queue_wait_seconds", "Time calls waited for a free worker"
        )
        wait.add_metric([], self.stats.queue_wait.cumulative(), self.stats.queue_wait.total)
        yield from (calls, latency, answers, wait)

    def _server_metrics(self, snap: Snapshot) -> Iterator[Metric]:
        workers = GaugeMetricFamily(
            "tykworker_workers", "Workers connected to the front, by state", labels=["state"]
        )
        for state, count in sorted(snap.workers.items()):
            workers.add_metric([state], count)
        yield workers
        in_flight = GaugeMetricFamily(
            "tykworker_worker_calls_in_flight",
            "Calls a worker holds now (sync ones: at most pipeline_depth; async ones: at most "
            "async_concurrency), by scoreboard slot",
            labels=["slot"],
        )
        for slot, count in sorted(snap.worker_in_flight.items()):
            in_flight.add_metric([str(slot)], count)
        yield in_flight
        gauges = (
            ("tykworker_queue_depth", "Calls waiting for a free worker", snap.queue_depth),
            ("tykworker_calls_in_flight", "Calls queued or running", snap.in_flight),
            ("tykworker_serving", "1 while the health service says SERVING", snap.serving),
            ("tykworker_generation", "Current worker generation", snap.generation),
            ("tykworker_workers_target", "Configured number of workers", snap.target_workers),
            ("tykworker_degraded", "1 while fewer workers are ready than wanted", snap.degraded),
        )
        for name, text, value in gauges:
            yield GaugeMetricFamily(name, text, value=float(value))
        yield CounterMetricFamily(
            "tykworker_worker_restarts",
            "Workers replaced after a crash or a kill",
            value=snap.restarts,
        )
        yield CounterMetricFamily(
            "tykworker_worker_import_failures",
            "Workers that exited because their plugins failed to import (failed reloads)",
            value=snap.import_failures,
        )
        reloads = CounterMetricFamily(
            "tykworker_reloads", "Rolling reloads, by outcome", labels=["outcome"]
        )
        reloads.add_metric(["ready"], snap.reloads)
        reloads.add_metric(["failed"], snap.reload_failures)
        yield reloads


def make_registry(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The exposition (text or OpenMetrics, per the Accept header) and its content type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def parse_request_head(head: bytes) -> tuple[str, str, str]:
    """``(method, path, accept)`` of an HTTP/1.x request head; ValueError if malformed."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    accept = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept = value.strip()
    return method, target.split("?", 1)[0], accept


def respond(registry: CollectorRegistry, head: bytes) -> bytes:
    """The whole HTTP response to one request head (the connection closes after it)."""
    try:
        method, path, accept = parse_request_head(head)
    except ValueError:
        return _response(400, b"bad request\n", "text/plain")
    if path not in ("/metrics", "/"):
        return _response(404, b"not found: try /metrics\n", "text/plain")
    if method not in ("GET", "HEAD"):
        return _response(405, b"method not allowed\n", "text/plain")
    body, content_type = render(registry, accept)
    return _response(200, body, content_type, head_only=method == "HEAD")


def _response(status: int, body: bytes, content_type: str, head_only: bool = False) -> bytes:
    reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
    head = (
        f"HTTP/1.1 {status} {reasons[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + body


async def handle_scrape(
    registry: CollectorRegistry, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Serve one HTTP request on a metrics connection, then close it."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        writer.write(respond(registry, head[:-4]))
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        pass
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def snapshot(router: Router, header: HeaderView, serving: bool) -> Snapshot:
    """Gauges from the front's router and counters from the scoreboard header."""
    return Snapshot(
        workers=worker_states(
            (w.in_flight > 0, w.draining, w.lost) for w in router.workers.values()
        ),
        queue_depth=len(router.queue),
        in_flight=router.in_flight,
        serving=serving,
        generation=header.generation,
        target_workers=header.target_workers,
        degraded=header.degraded,
        restarts=header.restarts,
        import_failures=header.import_failures,
        reloads=header.reloads,
        reload_failures=header.reload_failures,
        worker_in_flight={w.index: w.in_flight for w in router.workers.values()},
    )


@dataclass(frozen=True, slots=True)
class Endpoint:
    stats: CallStats  # the front records calls here
    server: asyncio.AbstractServer
    unix_paths: list[str]  # to remove on exit


async def start_endpoint(
    address: str, socket_mode: int, snapshot: Callable[[], Snapshot]
) -> Endpoint:
    """Listen on ``address`` (the ``metrics`` setting) on the running event loop.

    Raises ``OSError`` (cannot bind) or ``ConfigError`` (a Unix path that is taken).
    """
    parsed = metrics_address(address)
    if parsed is None:
        raise OSError(f"not a metrics address: {address!r}")  # config validated it
    stats = CallStats()
    registry = make_registry(FrontCollector(stats, snapshot))

    async def scrape(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle_scrape(registry, reader, writer)

    kind, host, port = parsed
    if kind == "unix":
        sock = sockets.bind_unix_listener(Path(host), socket_mode)
        server = await asyncio.start_unix_server(scrape, sock=sock, limit=_MAX_REQUEST_HEAD)
        return Endpoint(stats, server, [host])
    server = await asyncio.start_server(scrape, host or None, port, limit=_MAX_REQUEST_HEAD)
    return Endpoint(stats, server, [])


def worker_states(workers: Iterable[tuple[bool, bool, bool]]) -> dict[str, int]:
    """Count ``(busy, draining, lost)`` triples as busy/idle/draining/lost."""
    counts = dict.fromkeys(("busy", "idle", "draining", "lost"), 0)
    for busy, draining, lost in workers:
        state = "lost" if lost else "draining" if draining else "busy" if busy else "idle"
        counts[state] += 1
    return counts
