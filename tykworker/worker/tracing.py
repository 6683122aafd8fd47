"""A worker's span per traced call (``DISPATCH_TRACED``/``EVENT_TRACED`` frames).

``start`` (once, in the worker process after fork, before plugins are imported) installs the
SDK's tracer provider as the global one and instruments httpx when its instrumentation is
installed, so that plugin code's ``opentelemetry.trace.get_tracer(...)`` spans and httpx
calls made inside a hook are children of the call's span. ``stop`` flushes at exit.

``run`` serves one traced call: the span is a child of the gateway's span (the context the
front copied from the call's headers), named after the hook, starts when the front received
the call and ends when the worker's reply is made; the time spent waiting in the front for a
worker is its attribute ``tykworker.queue_wait_s``. Its outcome is ``ok`` or the reason the
runtime answered for the hook (``logs.active_call.failure``: ``hook_error``...), with
an ERROR status then. Calls the front answers without the worker's reply (timeout, crash,
overload) get their span from the front instead (front/tracing.py): the worker holding them
is killed or never saw them.

Invariant: a traced frame gets exactly the reply its plain kind would get; a prefix that
does not decode is logged and the call runs untraced (the Object is still answered).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from tykworker import logs
from tykworker import tracing as setup
from tykworker.config import HOOK_TYPES, Settings
from tykworker.wire import tracecontext
from tykworker.wire.frames import FrameKind, peek_object_header

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

log = logging.getLogger("tykworker.worker")

#: traced kind -> the plain kind its payload is served as
PLAIN: Final = {
    FrameKind.DISPATCH_TRACED: FrameKind.DISPATCH,
    FrameKind.EVENT_TRACED: FrameKind.EVENT,
}
_HOOK_TYPE_NAMES: Final = {number: name for name, number in HOOK_TYPES.items()}
Handle = Callable[[int, bytes | bytearray], None]  # (plain kind, payload): the loop's own call path

_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_generation = 0


def start(settings: Settings, generation: int) -> None:
    """Tracing for this worker process, if the settings and environment turn it on."""
    global _provider, _tracer, _generation
    if not setup.enabled(settings.tracing, os.environ):
        return
    try:
        _provider = setup.start("worker")
    except Exception as exc:  # a broken SDK install must not stop the worker
        log.error("tracing unavailable in this worker: %s", exc)
        return
    _tracer = _provider.get_tracer("tykworker.worker")
    _generation = generation
    try:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    except ImportError:  # optional: plugins may instrument their own clients
        return
    HTTPXClientInstrumentor().instrument(tracer_provider=_provider)


def stop() -> None:
    if _provider is not None:
        setup.stop(_provider)


def run(kind: int, payload: bytes | bytearray, handle: Handle) -> None:
    """Serve a traced frame with ``handle`` inside the call's span."""
    try:
        context, body = tracecontext.split(payload)
    except ValueError as exc:
        log.error("bad trace context prefix, call served untraced: %s", exc)
        handle(PLAIN[FrameKind(kind)], payload)  # the runtime's bad-payload answer
        return
    plain = PLAIN[FrameKind(kind)]
    if _tracer is None:  # tracing failed to start here: serve it as the plain call
        handle(plain, body)
        return
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    if plain == FrameKind.DISPATCH:
        number, hook = peek_object_header(body)
        hook_type = _HOOK_TYPE_NAMES.get(number, "unknown")
    else:
        hook, hook_type = "event", "event"
    span = _tracer.start_span(
        hook or hook_type,
        context=setup.extract(context.headers),
        kind=SpanKind.SERVER,
        start_time=setup.wall_ns(context.arrived),
    )

    def finish(call: logs.ActiveCall) -> None:
        """End the span with what the call's record says (an async call: when its task
        ends, from the record the task took over)."""
        if call.hook and call.hook != hook:
            span.update_name(call.hook)  # an event's handler name, known once it ran
        outcome = call.failure or "ok"
        span.set_attributes(
            {
                "tykworker.hook.name": call.hook,
                "tykworker.hook.type": hook_type,
                "tyk.api.id": call.api_id,
                "tykworker.worker.pid": os.getpid(),
                "tykworker.generation": _generation,
                "tykworker.outcome": outcome,
                "tykworker.queue_wait_s": context.queue_wait,
            }
        )
        if call.failure:
            span.set_status(Status(StatusCode.ERROR, call.failure))
        span.end()

    logs.active_call.on_end = finish
    try:
        with trace.use_span(span, end_on_exit=False):  # an async hook's task inherits it
            handle(plain, body)
    finally:
        if logs.active_call.on_end is finish:  # served now, not handed to a task
            logs.active_call.on_end = None
            finish(logs.active_call)
