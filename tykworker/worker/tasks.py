"""A worker's async calls: its event loop, the tasks in flight, their cancellation.

Runs in workers only. The worker loop (loop.py) hands over a call whose hook is an
``async def`` as a ``dispatch.Pending`` reply; ``Tasks.start`` runs it as an asyncio task
of the worker's own event loop (created on first use: a worker without async hooks never
has one), and ``complete`` (the worker's) frames the reply when the task ends. Sync hooks
still run inline, one at a time, from the loop's read callback.

Invariants:
* Every call started here ends in exactly one of: ``complete`` called with its reply
  (the task returned), or ``cancel`` (the front's ``Cancel``: the call was answered at
  its deadline; the task is cancelled, the hook sees ``CancelledError``, and whatever it
  returns afterwards is dropped). Each call has its own ``logs.ActiveCall`` record, set in
  its task's context (``logs.task_call``).
* ``serve`` runs the loop with the bridge and the signal wake-up as its readers until the
  front closes the bridge, a callback returns an exit code, or the parent changes.
* ``live`` holds the tasks still running (cancelled ones until they finish), so a drain
  or a stop can wait for them; ``close`` cancels what is left and closes the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from tykworker import logs
from tykworker.wire import control
from tykworker.worker.dispatch import Pending

log = logging.getLogger("tykworker.worker")

#: ``complete(kind, call_id, record, payload, reply)``: frame the reply of a finished call.
Complete = Callable[[int, int, logs.ActiveCall, bytes | bytearray, bytes], None]


@dataclass(slots=True)
class Running:
    """One async call in flight."""

    task: asyncio.Task[None]
    hook: str
    started_at: float  # time.time(), for the scoreboard


class Tasks:
    def __init__(self, complete: Complete) -> None:
        self.complete = complete
        self._loop: asyncio.AbstractEventLoop | None = None
        self.live: dict[int, Running] = {}  # call id -> its task, oldest first
        self.cancelled: set[int] = set()  # cancelled, still running
        self.background: set[asyncio.Task[None]] = set()  # trigger_event of async handlers

    def loop(self) -> asyncio.AbstractEventLoop:
        """The worker's event loop (the standard one: uvloop would take over the signal
        wake-up descriptor the worker's signal handling relies on)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    @property
    def busy(self) -> bool:
        """Some task is running or scheduled."""
        return bool(self.live or self.background)

    def start(
        self,
        kind: int,
        call_id: int,
        record: logs.ActiveCall,
        payload: bytes | bytearray,
        pending: Pending,
    ) -> None:
        """Run ``pending`` (the reply of call ``call_id``) as a task."""
        task = self.loop().create_task(self._run(kind, call_id, record, payload, pending))
        self.live[call_id] = Running(task, record.hook, time.time())

    async def _run(
        self,
        kind: int,
        call_id: int,
        record: logs.ActiveCall,
        payload: bytes | bytearray,
        pending: Pending,
    ) -> None:
        logs.task_call.set(record)
        reply: bytes | None = None
        try:
            reply = await pending
        except asyncio.CancelledError:
            pass  # the front's cancel (answered already), or the worker's exit
        finally:
            self.live.pop(call_id, None)
        if call_id in self.cancelled:  # whatever the hook did then, it is too late
            self.cancelled.discard(call_id)
            reply = None
        elif reply is not None:
            self.complete(kind, call_id, record, payload, reply)
        if record.on_end is not None:  # the call's trace span
            end, record.on_end = record.on_end, None
            if reply is None:
                record.failure = record.failure or "cancelled"
            end(record)

    def serve(
        self,
        bridge: socket.socket,
        buffer: bytearray,
        wake: socket.socket,
        on_data: Callable[[int], int | None],
        on_wake: Callable[[], int | None],
        parent: int,
        on_beat: Callable[[], None],
    ) -> int:
        """Read the bridge into ``buffer`` (``on_data(size)`` for each read) and the wake-up
        socket (``on_wake()``) on the loop, and call ``on_beat()`` every
        ``control.ALIVE_INTERVAL`` seconds; return the exit code: a callback's, or OK when
        the front closes the bridge (drained, or gone) or the parent pid changes."""
        loop = self.loop()
        done: asyncio.Future[int] = loop.create_future()

        def finish(code: int | None) -> None:
            if code is not None and not done.done():
                done.set_result(code)

        def on_bridge() -> None:
            try:
                size = bridge.recv_into(buffer)
            except BlockingIOError:
                return
            except OSError:
                size = 0
            finish(on_data(size) if size else 0)

        def on_signal() -> None:
            with contextlib.suppress(BlockingIOError):
                wake.recv(512)
            finish(on_wake())

        def watch_parent() -> None:
            if os.getppid() != parent:
                log.warning("supervisor went away; exiting")
                finish(0)
            else:
                loop.call_later(5.0, watch_parent)

        def beat() -> None:
            on_beat()
            loop.call_later(control.ALIVE_INTERVAL, beat)

        loop.add_reader(bridge.fileno(), on_bridge)
        loop.add_reader(wake.fileno(), on_signal)
        loop.call_later(5.0, watch_parent)
        beat()
        try:
            return loop.run_until_complete(done)
        finally:
            loop.remove_reader(bridge.fileno())
            loop.remove_reader(wake.fileno())

    def cancel(self, call_id: int) -> bool:
        """Cancel call ``call_id``'s task; False if it is not running (it replied)."""
        running = self.live.get(call_id)
        if running is None or call_id in self.cancelled:
            return False
        self.cancelled.add(call_id)
        running.task.cancel()
        return True

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` (an async ``@Event`` handler a hook triggered) in the background."""
        task = self.loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def oldest(self) -> Running | None:
        return next(iter(self.live.values()), None)

    def cancel_all(self, grace: float) -> None:
        """Cancel the tasks left (their calls were answered, or the front is gone) and
        give them ``grace`` seconds to finish. The loop must not be running."""
        loop = self._loop
        left = [r.task for r in self.live.values()] + list(self.background)
        if loop is None or not left:
            return
        for task in left:
            task.cancel()
        try:
            loop.run_until_complete(asyncio.wait(left, timeout=grace))
        except Exception:  # a hook that misbehaves while cancelled
            log.exception("async calls failed while cancelled")

    def close(self) -> None:
        """``cancel_all`` once more, then close the loop."""
        self.cancel_all(grace=1.0)
        if self._loop is not None:
            self._loop.close()
            self._loop = None
