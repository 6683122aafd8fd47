"""The front's spans: traced calls that tykworker answered without a worker's reply.

A call answered by the front (timeout, crash, overload, unavailable) cannot get its span
from a worker: a timed-out worker is killed before it could export one, a crashed one is
gone, and an overloaded or unavailable call never reached any. So the front exports those
spans itself, with its own tracer provider started in the front process (after fork), and
only those: a call a worker answered is the worker's span (worker/tracing.py).

The span has the same name and attributes as a worker's span, except ``tyk.api.id``: the
front never parses the Object, so it does not know the API. It starts when the front
received the call and ends when the front answered; ``tykworker.outcome`` is the answer's
reason code (``timeout``, ``crash``, ``overload``, ``unavailable``) and its status ERROR.
Building one costs only when such an answer is given, never on the call path.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from tykworker import tracing as setup
from tykworker.wire import tracecontext

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from tykworker.front.router import Call

log = logging.getLogger("tykworker.front")


class FrontTracer:
    """Spans for calls answered by the front; ``close`` flushes them at exit."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("tykworker.front")

    @classmethod
    def start(cls, setting: str) -> FrontTracer | None:
        """The front's tracer when tracing is on (None otherwise, or if the SDK fails)."""
        if not setup.enabled(setting, os.environ):
            return None
        try:
            return cls(setup.start("front"))
        except Exception as exc:  # calls matter more than spans
            log.error("tracing unavailable in the front: %s", exc)
            return None

    def answered(
        self,
        call: Call,
        hook_type: str,
        outcome: str,
        worker: tuple[int, int] | None,
        now: float,
    ) -> None:
        """Export the span of ``call``, answered ``outcome`` at ``now`` (monotonic);
        ``worker`` is the (pid, generation) that held it, if any."""
        from opentelemetry.trace import SpanKind, Status, StatusCode

        if call.trace is None:
            return
        try:
            headers = tracecontext.decode_carrier(call.trace)
        except ValueError as exc:  # the front made it: a bug, but never fatal to a call
            log.error("bad trace context of call %d: %s", call.call_id, exc)
            return
        queued = (call.sent_at or now) - call.arrived_at
        attributes: dict[str, str | int | float] = {
            "tykworker.hook.name": call.hook_name,
            "tykworker.hook.type": hook_type,
            "tykworker.outcome": outcome,
            "tykworker.queue_wait_s": max(0.0, queued),
        }
        if worker is not None:
            attributes["tykworker.worker.pid"] = worker[0]
            attributes["tykworker.generation"] = worker[1]
        span = self.tracer.start_span(
            call.hook_name or hook_type,
            context=setup.extract(headers),
            kind=SpanKind.SERVER,
            start_time=setup.wall_ns(call.arrived_at, now),
            attributes=attributes,
        )
        span.set_status(Status(StatusCode.ERROR, outcome))
        span.end(end_time=setup.wall_ns(now, now))

    def close(self) -> None:
        setup.stop(self.provider)
