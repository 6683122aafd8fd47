"""Worker process: a thread that ends the worker once its supervisor is gone.

The worker normally leaves by itself when the supervisor dies (parent-death SIGTERM, a
new parent pid seen by the loop, the front's EOF), but only when its hook returns; and the
orphaned front, which kills a worker still busy after its drain, may be dead too. So:

Invariant: ``grace`` seconds (``graceful_timeout``) after the supervisor died, this
worker's process group (the worker and what its plugins spawned) is SIGKILLed, unless the
worker exited first. The thread waits on a pidfd of the supervisor (no wake-up while it
lives, nothing on the call path) or, where pidfds are missing, checks the parent pid once
a second. It runs whenever the main thread does not hold the GIL: in Python code, or in
C code that releases it (``time.sleep``, blocking I/O, ``select``, ctypes calls such as
``libc.sleep``). Not covered: C code that holds the GIL forever (a regex backtracking, a
C extension's loop); while the front lives it kills such a worker after its drain
(front/core.py ``_kill_orphaned_workers``), and only SIGKILL of both leaves it running.

The pidfd gives plugin code no power over the supervisor it lacked: signalling through it
(``pidfd_send_signal``) is checked like ``kill``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time

log = logging.getLogger("tykworker.worker")


def start(parent: int, grace: float) -> threading.Thread:
    """Watch ``parent`` (the supervisor, this worker's parent) from a daemon thread."""
    fd: int | None
    try:
        fd = os.pidfd_open(parent)
    except (AttributeError, OSError):  # Linux < 5.3, or Python without pidfd_open
        fd = None
    thread = threading.Thread(
        target=_watch, args=(parent, fd, grace), name="tykworker-watchdog", daemon=True
    )
    thread.start()
    return thread


def _watch(parent: int, fd: int | None, grace: float) -> None:
    if fd is not None and os.getppid() == parent:  # the pidfd is of our parent, not a reuse
        poller = select.poll()
        poller.register(fd, select.POLLIN)  # readable once the process has exited
        while not poller.poll():
            pass
    else:
        while os.getppid() == parent:
            time.sleep(1.0)
    log.warning("supervisor pid %d gone: this worker ends in %g s at the latest", parent, grace)
    time.sleep(grace)
    log.error("supervisor pid %d gone %g s ago, this worker still busy: killing it", parent, grace)
    if os.getpgid(0) == os.getpid():  # our own group (supervisor.py): never the front's
        with contextlib.suppress(OSError):
            os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
