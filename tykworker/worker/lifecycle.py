"""Per-worker lifecycle hooks: ``@OnStart`` before the first call, ``@OnStop`` after the last.

Runs in workers only (worker/loop.py calls ``start`` after the plugins are imported and
before HELLO, ``stop`` when the worker leaves). Hooks run in load order, each in its
scope; an ``async def`` one runs to completion on the worker's event loop (the loop its
async calls use, so a client it opens, e.g. an ``httpx.AsyncClient``, belongs to that loop).

Invariants: ``start`` raises ``PluginLoadError`` (hook, file, line, traceback) for the first
``OnStart`` that raises: such a worker never serves. ``stop`` never raises: an ``OnStop``
that fails is logged and the others still run; each async one gets at most ``timeout``
seconds.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

from tykworker.errors import PluginLoadError
from tykworker.worker.dispatch import Target
from tykworker.worker.scope import scoped
from tykworker.worker.tyk.decorators import OnStart, OnStop

log = logging.getLogger("tykworker.plugins")

GetLoop = Callable[[], asyncio.AbstractEventLoop]


def _call(target: Target, get_loop: GetLoop, timeout: float | None) -> None:
    handler, scope = target
    if not handler.is_async:
        if scope is None:
            handler()
        else:
            with scope.active():
                handler()
        return
    coro: Coroutine[Any, Any, object] = handler()
    awaited = coro if scope is None else scoped(coro, scope)
    get_loop().run_until_complete(asyncio.wait_for(awaited, timeout))


def start(targets: list[Target], get_loop: GetLoop) -> None:
    """Run every ``@OnStart`` hook of ``targets``."""
    for target in targets:
        handler = target[0]
        if not isinstance(handler, OnStart):
            continue
        try:
            _call(target, get_loop, None)
        except Exception as exc:
            text = "".join(traceback.format_exception(exc)).rstrip()
            raise PluginLoadError(
                f"{handler.filename}:{handler.lineno}: @OnStart {handler.name} failed:\n{text}"
            ) from exc


def stop(targets: list[Target], get_loop: GetLoop, timeout: float) -> None:
    """Run every ``@OnStop`` hook of ``targets``; log the failures."""
    for target in targets:
        handler = target[0]
        if not isinstance(handler, OnStop):
            continue
        try:
            _call(target, get_loop, timeout)
        except Exception:
            log.error(
                "@OnStop %s (%s:%d) failed:\n%s",
                handler.name,
                handler.filename,
                handler.lineno,
                traceback.format_exc().rstrip(),
                extra={"hook": handler.name},
            )
