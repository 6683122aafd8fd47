"""Hooks for the tracing tests: plugin spans with the standard API, and httpx calls."""

import os
import time

import httpx
from opentelemetry import trace
from tyk.decorators import *  # noqa: F403

tracer = trace.get_tracer("tests.traced")
client = httpx.Client()  # made at import, before any call: instrumentation must cover it


@Hook  # noqa: F405
def Traced(request, session, spec):
    """A child span of its own; with an ``Upstream`` header, a GET of that URL inside it."""
    with tracer.start_as_current_span("plugin work") as span:
        span.set_attribute("plugin.attr", "yes")
        url = request.get_header("Upstream")
        if url:
            client.get(url)
    request.add_header("X-Worker-Pid", str(os.getpid()))
    return request, session


@Hook  # noqa: F405
def Hang(request, session, spec):
    """Never returns: the hook timeout answers for it and the worker is killed."""
    while True:
        time.sleep(0.05)


@Hook  # noqa: F405
def Raise(request, session, spec):
    raise RuntimeError("plugin failure on purpose")


@Hook  # noqa: F405
def Crash(request, session, spec):
    """The worker dies in the middle of the call: the front answers it (crash)."""
    os._exit(9)


@Hook  # noqa: F405
async def TracedAsync(request, session, spec):
    """An async hook: its span lasts until the hook returns, its own span is a child."""
    import asyncio

    with tracer.start_as_current_span("async plugin work"):
        await asyncio.sleep(float(request.get_header("Sleep") or "0.2"))
    return request, session
