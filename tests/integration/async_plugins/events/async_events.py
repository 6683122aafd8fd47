"""An async event handler for tests/integration/test_async_hooks.py."""

import asyncio

from gateway import TykGateway as tyk
from tyk.decorators import *  # noqa: F403


@Event  # noqa: F405
async def AsyncRecordEvent(event, spec):
    await asyncio.sleep(0)
    await tyk.store_data_async("async-event:" + event.message["Type"], "seen", 60)
