"""Async hooks in the worker runtime (issue 15): each call's scope during each step of its
coroutine, its own failure record, cancellation, lifecycle hooks, the async store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from tykworker import logs
from tykworker.cli.objects import PRE, bundle_hash, gateway_object, parse
from tykworker.config import Settings
from tykworker.errors import PluginLoadError
from tykworker.wire.reasons import Reason
from tykworker.worker import lifecycle
from tykworker.worker.plugins import Runtime, load_runtime

BUNDLE_HOOK = """
import asyncio
from tyk.decorators import *

@Hook
async def Lazy(request, session, spec):
    for _ in range(5):
        await asyncio.sleep(0)  # the other bundle's call runs here
    import helper  # resolved at call time: must be this bundle's
    request.add_header("X-Helper", helper.NAME)
    return request, session
"""

MIDDLEWARE = """
import asyncio
from gateway import TykGateway as tyk
from tyk.decorators import *

EVENTS = []

@Hook
async def Fails(request, session, spec):
    await asyncio.sleep(0)
    raise ValueError("no")

@Hook
async def Forever(request, session, spec):
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        EVENTS.append("cancelled")
        raise

@Hook
async def Stored(request, session, spec):
    await tyk.store_data_async("k", "v", 0)
    request.add_header("X-Value", (await tyk.get_data_async("k")).decode())
    request.add_header("X-Sync", tyk.get_data("k").decode())
    return request, session

@Event
async def AsyncEv(event, spec):
    await asyncio.sleep(0)
    EVENTS.append("event:" + event.message["Meta"]["Message"])

@OnStart
async def opened():
    EVENTS.append("start")

@OnStop
def closed():
    EVENTS.append("stop")
"""


def _bundle(root: Path, name: str) -> None:
    path = root / bundle_hash(name + ".zip")
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"file_list": ["middleware.py"]}))
    (path / "middleware.py").write_text(BUNDLE_HOOK)
    (path / "helper.py").write_text(f"NAME = {name!r}\n")


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    bundles, middleware = tmp_path / "bundles", tmp_path / "middleware"
    _bundle(bundles, "alpha")
    _bundle(bundles, "beta")
    middleware.mkdir()
    (middleware / "hooks.py").write_text(MIDDLEWARE)
    rt = load_runtime(
        Settings(
            middleware=str(middleware),
            event_handlers=str(tmp_path / "none"),
            bundles=str(bundles),
            runtime_dir=str(tmp_path / "run"),
        )
    )
    yield rt
    rt.close()


def _events(runtime: Runtime) -> list[str]:
    return runtime.middleware.hooks["Fails"].f.__globals__["EVENTS"]  # type: ignore[no-any-return]


def test_interleaved_async_calls_each_import_from_their_own_bundle(runtime: Runtime) -> None:
    async def both() -> list[bytes]:
        pending = [
            runtime.start_dispatch(
                gateway_object(PRE, "Lazy", bundle=bundle_hash(name + ".zip")).SerializeToString()
            )
            for name in ("alpha", "beta", "alpha")
        ]
        assert not any(isinstance(p, bytes) for p in pending)
        return await asyncio.gather(*pending)  # type: ignore[arg-type]

    replies = [parse(r) for r in asyncio.run(both())]
    assert [r.request.set_headers["X-Helper"] for r in replies] == ["alpha", "beta", "alpha"]
    assert runtime.async_hooks() == ("Fails", "Forever", "Lazy", "Stored")  # not events


def test_a_failing_async_hook_gets_the_hook_error_answer_in_its_own_record(
    runtime: Runtime,
) -> None:
    record = logs.ActiveCall(7, "Fails")

    async def run() -> bytes:
        logs.task_call.set(record)
        pending = runtime.start_dispatch(gateway_object(PRE, "Fails").SerializeToString())
        assert not isinstance(pending, bytes)
        return await pending

    reply = parse(asyncio.run(run()))
    assert reply.request.return_overrides.response_code == Reason.HOOK_ERROR.status
    assert record.failure == Reason.HOOK_ERROR.code


def test_a_cancelled_async_call_raises_cancelled_error_in_the_hook(runtime: Runtime) -> None:
    async def run() -> None:
        pending = runtime.start_dispatch(gateway_object(PRE, "Forever").SerializeToString())
        task = asyncio.ensure_future(pending)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert _events(runtime) == ["cancelled"]


def test_async_store_calls_reach_the_same_store(runtime: Runtime) -> None:
    reply = parse(runtime.dispatch(gateway_object(PRE, "Stored").SerializeToString()))
    assert reply.request.set_headers["X-Value"] == "v"
    assert reply.request.set_headers["X-Sync"] == "v"


def test_lifecycle_hooks_run_in_order_on_one_loop(runtime: Runtime) -> None:
    loop = asyncio.new_event_loop()
    try:
        lifecycle.start(runtime.lifecycle, lambda: loop)
        lifecycle.stop(runtime.lifecycle, lambda: loop, 1.0)
    finally:
        loop.close()
    assert _events(runtime) == ["start", "stop"]


def test_a_failing_on_start_hook_is_a_plugin_load_error(tmp_path: Path) -> None:
    middleware = tmp_path / "m"
    middleware.mkdir()
    (middleware / "bad.py").write_text(
        "from tyk.decorators import *\n@OnStart\ndef boom():\n    raise OSError('down')\n"
    )
    rt = load_runtime(Settings(middleware=str(middleware), runtime_dir=str(tmp_path / "r")))
    try:
        with pytest.raises(PluginLoadError, match="@OnStart boom failed"):
            lifecycle.start(rt.lifecycle, asyncio.new_event_loop)
    finally:
        rt.close()


def test_trigger_event_starts_an_async_handler_as_a_task(runtime: Runtime) -> None:
    spawned: list[Coroutine[Any, Any, None]] = []
    assert runtime.trigger_event("AsyncEv", "x") == 0  # no loop to run it: not run
    runtime.spawn = spawned.append
    assert runtime.trigger_event("AsyncEv", "hello") == 1
    assert _events(runtime) == []  # started, not awaited
    (coro,) = spawned
    asyncio.run(coro)
    assert _events(runtime) == ["event:hello"]
