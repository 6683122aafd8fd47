"""Async hooks for tests/integration/test_async_hooks.py, as Tyk users would write them."""

import asyncio
import os
import time
from pathlib import Path

from gateway import TykGateway as tyk
from tyk.decorators import *  # noqa: F403

STATE = {"started": 0, "cancelled": 0}


async def _gate(path: str) -> None:
    while not os.path.exists(path):
        await asyncio.sleep(0.005)


@Hook  # noqa: F405
def SyncEcho(request, session, spec):
    request.add_header("X-Worker-Pid", str(os.getpid()))
    return request, session


@Hook  # noqa: F405
async def AsyncGate(request, session, spec):
    """Holds the call (not the worker) until the file named by ``Gate`` exists."""
    await _gate(request.get_header("Gate"))
    request.add_header("X-Worker-Pid", str(os.getpid()))
    request.add_header("X-Id", request.get_header("X-Id"))
    return request, session


@Pre  # noqa: F405
async def AsyncPre(request, session, spec):
    await asyncio.sleep(0)
    request.add_header("X-Kind", "pre")
    return request, session


@Post  # noqa: F405
async def AsyncPost(request, session, spec):
    await asyncio.sleep(0)
    request.add_header("X-Kind", "post")
    return request, session


@PostKeyAuth  # noqa: F405
async def AsyncPostKeyAuth(request, session, spec):
    await asyncio.sleep(0)
    request.add_header("X-Kind", "post_key_auth")
    return request, session


@CustomKeyCheck  # noqa: F405
async def AsyncAuth(request, session, metadata, spec):
    await asyncio.sleep(0)
    if request.get_header("Authorization") == "good":
        metadata["token"] = "good"
        session.rate = 1000.0
    else:
        request.object.return_overrides.response_code = 403
    return request, session, metadata


@Response  # noqa: F405
async def AsyncResponse(request, response, session, metadata, spec):
    await asyncio.sleep(0)
    response.headers["X-Kind"] = "response"
    return response


@Hook  # noqa: F405
async def AsyncRaise(request, session, spec):
    await asyncio.sleep(0)
    raise RuntimeError("async plugin failure on purpose")


@Hook  # noqa: F405
async def AsyncForever(request, session, spec):
    """Never returns by itself; notes its cancellation in the file named by ``Mark``."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        Path(request.get_header("Mark")).write_text("cancelled")
        raise
    return request, session


@Hook  # noqa: F405
async def AsyncBlock(request, session, spec):
    """Blocks the worker's event loop: never awaits (the mistake the test catches)."""
    time.sleep(float(request.get_header("Sleep") or "60"))
    return request, session


@Hook  # noqa: F405
async def AsyncStore(request, session, spec):
    key = request.get_header("Key")
    await tyk.store_data_async(key, request.get_header("Value"), 60)
    value = await tyk.get_data_async(key)
    request.add_header("X-Stored", value.decode())
    return request, session


@Hook  # noqa: F405
async def AsyncLifecycle(request, session, spec):
    request.add_header("X-Started", str(STATE["started"]))
    request.add_header("X-Client", CLIENT["state"])
    return request, session


CLIENT = {"state": "none"}


@OnStart  # noqa: F405
async def open_client():
    await asyncio.sleep(0)
    STATE["started"] += 1
    CLIENT["state"] = "open"


@OnStop  # noqa: F405
def close_client():
    mark = os.environ.get("TYKWORKER_TEST_STOP_MARK")
    if mark:
        with open(mark, "a") as f:
            f.write(f"{os.getpid()}\n")


@Hook  # noqa: F405
async def AsyncRead(request, session, spec):
    value = await tyk.get_data_async(request.get_header("Key"))
    request.add_header("X-Stored", value.decode())
    return request, session
