"""Worker process: a thread that ends the worker once its supervisor is gone.

The worker normally leaves by itself when the supervisor dies (parent-death SIGTERM, a
new parent pid seen by the loop, the front's EOF), but only when its hook returns; and the
orphaned front, which kills a worker still busy after its drain, may be dead too. So:

Invariant: within ``grace`` seconds (``graceful_timeout``) after the supervisor died,
this worker's process group (the worker and what its plugins spawned) is SIGKILLed, unless
the worker exited first. The thread checks the parent pid every ``PERIOD`` seconds (a
system call, nothing on the call path; no descriptor: a pidfd would be one more of the
supervisor's for plugin code to hold), then waits ``grace - PERIOD``. It runs whenever the
main thread does not hold the GIL: in Python code, or in C code that releases it
(``time.sleep``, blocking I/O, ``select``, ctypes calls such as ``libc.sleep``). Not
covered: C code that holds the GIL forever (a regex backtracking, a C extension's loop);
while the front lives it kills such a worker after its drain (front/core.py
``_kill_orphaned_workers``), and only SIGKILL of both leaves it running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger("tykworker.worker")


PERIOD = 0.5  # seconds between two looks at the parent pid


def start(parent: int, grace: float, tick: Callable[[], None] | None = None) -> threading.Thread:
    """Watch ``parent`` (the supervisor, this worker's parent) from a daemon thread;
    ``tick`` runs on that thread after each look while the parent lives (the worker's
    process title: loop.py ``_show_running``); an exception it raises is logged once and
    ends the ticks, never the watch."""
    thread = threading.Thread(
        target=_watch, args=(parent, grace, tick), name="tykworker-watchdog", daemon=True
    )
    thread.start()
    return thread


def _watch(parent: int, grace: float, tick: Callable[[], None] | None = None) -> None:
    while os.getppid() == parent:
        time.sleep(PERIOD)
        if tick is not None:
            try:
                tick()
            except Exception:
                log.exception("watchdog tick failed; no more ticks")
                tick = None
    log.warning("supervisor pid %d gone: this worker ends in %g s at the latest", parent, grace)
    time.sleep(max(0.0, grace - PERIOD))  # it may have died up to PERIOD ago
    log.error("supervisor pid %d gone %g s ago, this worker still busy: killing it", parent, grace)
    if os.getpgid(0) == os.getpid():  # our own group (supervisor.py): never the front's
        with contextlib.suppress(OSError):
            os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
