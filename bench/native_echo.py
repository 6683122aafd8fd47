"""The native front's HTTP/2 server alone: an in-process echo handler instead of the pool.

    python bench/native_echo.py /tmp/echo.sock &
    bench/bin/loadgen -target unix:///tmp/echo.sock -payload bench/out/payloads/trivial.bin \
        -c 16 -duration 5s -expect X-Bench

Same ``NativeServer``/``H2Connection`` and call callback as in the front, but the
handler answers at once (the request bytes plus the ``X-Bench`` marker the load generator
checks). It measures what HTTP/2 costs per call, without the router, bridge and workers.
SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tykworker.front.h2.state import Limits
from tykworker.front.native import NativeServer
from tykworker.system import sockets
from tykworker.wire.frames import FrameKind

MARKER = b"\x0a\x07X-Bench"  # appended so that `loadgen -expect X-Bench` counts the reply


def echo(
    kind: FrameKind,
    payload: bytes,
    timeout: float | None,
    respond: Callable[[bytes], None],
    trace: bytes | None,
) -> None:
    """The front's call handler (``native.Handler``), answering at once."""
    respond(bytes(payload) + MARKER)


async def main(path: str) -> None:
    server = NativeServer(echo, Limits(), buffer_limit=1 << 27)
    await server.start(sock=sockets.bind_unix_listener(Path(path), 0o600))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)
    Path(path).unlink(missing_ok=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/echo-native.sock"))
